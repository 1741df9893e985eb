//! `haimg down`: find what haimg made for the cluster, then delete it in reverse order.
//!
//! Found by name (from the spec) and by the `haimg:cluster` tag (so a pool removed from
//! the spec is still found); a resource with our name but without our tag is reported and
//! left alone. Every delete treats "not found" as done, so `down` can always be re-run,
//! after a partial `up` or a partial `down`.

use std::time::Duration;

use serde::Serialize;

use super::desired::{owned_by, Desired, CLUSTER_TAG};
use super::observe::{self, Clients};
use crate::aws::elb::TargetGroupDelete;
use crate::aws::{autoscaling, ec2, elb, ssm};
use crate::error::Result;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    pub groups: Vec<String>,
    /// (id, name)
    pub launch_templates: Vec<(String, String)>,
    pub listener: Option<String>,
    /// (name, ARN)
    pub load_balancer: Option<(String, String)>,
    pub target_group: Option<(String, String)>,
    pub parameters: Vec<String>,
    /// Resources with our names that are not tagged as ours: left alone.
    pub foreign: Vec<String>,
}

/// A resource `down` deletes: its kind, name and (where AWS names it so) id or ARN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resource {
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Inventory {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
            && self.launch_templates.is_empty()
            && self.listener.is_none()
            && self.load_balancer.is_none()
            && self.target_group.is_none()
            && self.parameters.is_empty()
    }
    /// Each resource as `down --output json` reports it, in deletion order.
    pub fn resources(&self) -> Vec<Resource> {
        let r = |kind: &'static str, name: &str, id: Option<&str>| Resource {
            kind,
            name: name.to_string(),
            id: id.map(str::to_string),
        };
        let mut v: Vec<Resource> = self
            .groups
            .iter()
            .map(|g| r("auto scaling group", g, None))
            .collect();
        v.extend(
            self.launch_templates
                .iter()
                .map(|(id, n)| r("launch template", n, Some(id))),
        );
        if let Some(l) = &self.listener {
            v.push(r("listener", l, Some(l)));
        }
        if let Some((n, arn)) = &self.load_balancer {
            v.push(r("load balancer", n, Some(arn)));
        }
        if let Some((n, arn)) = &self.target_group {
            v.push(r("target group", n, Some(arn)));
        }
        v.extend(self.parameters.iter().map(|p| r("ssm parameter", p, None)));
        v
    }

    /// One line per resource, in deletion order.
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .groups
            .iter()
            .map(|g| format!("auto scaling group {g} (and its instances)"))
            .collect();
        v.extend(
            self.launch_templates
                .iter()
                .map(|(id, n)| format!("launch template {n} ({id})")),
        );
        if let Some(l) = &self.listener {
            v.push(format!("listener {l}"));
        }
        if let Some((n, _)) = &self.load_balancer {
            v.push(format!("load balancer {n}"));
        }
        if let Some((n, _)) = &self.target_group {
            v.push(format!("target group {n}"));
        }
        v.extend(self.parameters.iter().map(|p| format!("ssm parameter {p}")));
        v
    }
}

/// Everything haimg made for the cluster that still exists.
pub async fn inventory(c: &Clients, d: &Desired) -> Result<Inventory> {
    let cluster = &d.cluster;
    let mut inv = Inventory::default();
    // Groups: by tag, which also finds pools no longer in the spec.
    let tagged = autoscaling::tagged_groups(&c.asg, cluster).await?;
    let named: Vec<String> = d
        .groups
        .iter()
        .map(|g| g.asg.auto_scaling_group_name.clone())
        .chain(tagged)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (name, g, _) in autoscaling::groups(&c.asg, &named).await? {
        if owned_by(&g.tags, cluster) {
            inv.groups.push(name);
        } else {
            inv.foreign.push(format!("auto scaling group {name}"));
        }
    }
    // Launch templates: by tag, and by name to report foreign ones.
    inv.launch_templates = ec2::tagged(&c.ec2, CLUSTER_TAG, cluster).await?;
    let lt_names: Vec<String> = d
        .groups
        .iter()
        .map(|g| g.launch_template.launch_template_name.clone())
        .filter(|n| !inv.launch_templates.iter().any(|(_, x)| x == n))
        .collect();
    for (name, _) in ec2::launch_templates(&c.ec2, &lt_names).await? {
        inv.foreign.push(format!("launch template {name}"));
    }
    if let Some(api) = &d.api {
        let (lb, tg, listener) = elb::api(
            &c.elb,
            &api.load_balancer.name,
            &api.target_group.name,
            api.listener.port,
        )
        .await?;
        match lb {
            Some(lb) if owned_by(&lb.tags, cluster) => {
                inv.load_balancer = Some((api.load_balancer.name.clone(), lb.arn));
                if let Some(l) = listener {
                    inv.listener = Some(l.arn);
                }
            }
            Some(_) => inv
                .foreign
                .push(format!("load balancer {}", api.load_balancer.name)),
            None => {}
        }
        match tg {
            Some(tg) if owned_by(&tg.tags, cluster) => {
                inv.target_group = Some((api.target_group.name.clone(), tg.arn))
            }
            Some(_) => inv
                .foreign
                .push(format!("target group {}", api.target_group.name)),
            None => {}
        }
    }
    if let Some(prefix) = &d.ssm_prefix {
        match observe::marker(c, prefix).await? {
            Some(owner) if &owner != cluster => {
                inv.foreign.push(format!(
                    "ssm parameters under {prefix} (owned by cluster {owner})"
                ));
            }
            _ => {
                let mut names = ssm::layout_parameters(&c.ssm, prefix).await?;
                // The marker goes last: while it exists, the prefix is still known as ours.
                names.sort_by_key(|n| {
                    n.ends_with(&format!("/{}", crate::contract::layout::CLUSTER))
                });
                inv.parameters = names;
            }
        }
    }
    Ok(inv)
}

/// Deletes the inventory in reverse dependency order, waiting (bounded by `timeout`) for the
/// groups' instances to go before what they use. Returns the lines of what was deleted.
pub async fn delete(c: &Clients, inv: &Inventory, timeout: Duration, poll: Duration) -> Result<()> {
    let step = |what: String| crate::progress::note(format_args!("- deleted {what}"));
    for g in &inv.groups {
        autoscaling::delete_group(&c.asg, g).await?;
    }
    if !inv.groups.is_empty() {
        crate::progress::step(format_args!(
            "  waiting for {} group(s) and their instances to go…",
            inv.groups.len()
        ));
        crate::aws::wait_until(timeout, poll, "auto scaling group deletion", || async {
            let left = autoscaling::groups(&c.asg, &inv.groups).await?;
            Ok((!left.is_empty()).then(|| {
                left.iter()
                    .map(|(n, _, instances)| format!("{n}: {} instance(s)", instances.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }))
        })
        .await?;
        for g in &inv.groups {
            step(format!("auto scaling group {g}"));
        }
        crate::progress::step("  deleting what the groups used");
    }
    for (id, name) in &inv.launch_templates {
        if ec2::delete_launch_template(&c.ec2, id, name).await? {
            step(format!("launch template {name}"));
        }
    }
    if let Some(arn) = &inv.listener {
        if elb::delete_listener(&c.elb, arn).await? {
            step(format!("listener {arn}"));
        }
    }
    if let Some((name, arn)) = &inv.load_balancer {
        if elb::delete_load_balancer(&c.elb, arn, name).await? {
            step(format!("load balancer {name}"));
        }
    }
    if let Some((name, arn)) = &inv.target_group {
        // A target group stays "in use" until its load balancer is fully gone.
        crate::aws::wait_until(timeout, poll, &format!("target group {name}"), || async {
            Ok(match elb::delete_target_group(&c.elb, arn, name).await? {
                TargetGroupDelete::Done => None,
                TargetGroupDelete::InUse => Some("in use by its load balancer".to_string()),
            })
        })
        .await?;
        step(format!("target group {name}"));
    }
    ssm::delete(&c.ssm, &inv.parameters, |chunk| {
        for p in chunk {
            step(format!("ssm parameter {p}"));
        }
    })
    .await?;
    Ok(())
}
