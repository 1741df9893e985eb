//! Reads what AWS holds for a cluster: describe calls only, never a write, through
//! [`crate::aws`]'s per-service functions.

use super::desired::{Desired, Image};
use super::plan::{Observed, ObservedSsm};
pub use crate::aws::Clients;
use crate::aws::{autoscaling, ec2, elb, ssm};
use crate::error::{Error, Result};

/// The AMI the launch templates get: the pinned id, or the parameter's value now.
pub async fn resolve_image(c: &Clients, image: &Image) -> Result<String> {
    match image {
        Image::Ami(id) => Ok(id.clone()),
        Image::Parameter(p) => {
            let v = ssm::get(&c.ssm, p).await?.ok_or_else(|| {
                Error::Runtime(format!(
                    "spec.image.ssmParameter {p} does not exist in this region: bake the image first (`haimg bake`), or pin spec.image.ami"
                ))
            })?;
            if !v.starts_with("ami-") {
                return Err(Error::Runtime(format!(
                    "spec.image.ssmParameter {p} holds {v:?}, not an AMI id"
                )));
            }
            Ok(v)
        }
    }
}

/// `P/cluster`'s owner, if the marker exists.
pub async fn marker(c: &Clients, prefix: &str) -> Result<Option<String>> {
    let name = format!("{prefix}/{}", crate::contract::layout::CLUSTER);
    Ok(ssm::get(&c.ssm, &name).await?.map(|v| {
        serde_json::from_str::<serde_json::Value>(&v)
            .ok()
            .and_then(|v| v["cluster"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("<unreadable {name}>"))
    }))
}

/// Everything the plan compares.
pub async fn observe(c: &Clients, d: &Desired) -> Result<Observed> {
    let lt_names: Vec<String> = d
        .groups
        .iter()
        .map(|g| g.launch_template.launch_template_name.clone())
        .collect();
    let group_names: Vec<String> = d
        .groups
        .iter()
        .map(|g| g.asg.auto_scaling_group_name.clone())
        .collect();
    let api_fut = async {
        match &d.api {
            Some(a) => {
                elb::api(
                    &c.elb,
                    &a.load_balancer.name,
                    &a.target_group.name,
                    a.listener.port,
                )
                .await
            }
            None => Ok((None, None, None)),
        }
    };
    let (api, lts, groups) = tokio::try_join!(
        api_fut,
        ec2::launch_templates(&c.ec2, &lt_names),
        autoscaling::groups(&c.asg, &group_names)
    )?;
    let (load_balancer, target_group, listener) = api;
    let mut o = Observed {
        load_balancer,
        target_group,
        listener,
        launch_templates: lts.into_iter().collect(),
        groups: groups.into_iter().map(|(n, g, _)| (n, g)).collect(),
        ssm: ObservedSsm::default(),
    };
    if let Some(prefix) = &d.ssm_prefix {
        o.ssm.marker = marker(c, prefix).await?;
        let master_exists = d
            .groups
            .iter()
            .any(|g| g.asg.is_master() && o.groups.contains_key(&g.asg.auto_scaling_group_name));
        if d.masters_in_asg && !master_exists {
            o.ssm.leftovers = ssm::layout_parameters(&c.ssm, prefix)
                .await?
                .into_iter()
                .filter(|n| !n.ends_with(&format!("/{}", crate::contract::layout::CLUSTER)))
                .collect();
        }
    }
    Ok(o)
}
