//! Carries out a plan: one change at a time, in the plan's order, each through
//! [`crate::aws`]'s per-service functions (every write `up` makes). Each names its resource
//! in errors. ARNs and ids of what is created are recorded as it goes, so later changes can
//! refer to them (`haimg-ref:` placeholders are resolved here, before a call).

use std::sync::{Arc, Mutex};

use super::desired::{self, Tag, CLUSTER_TAG};
use super::observe::Clients;
use super::plan::{resolve_ref, Change, Kind, Observed};
use crate::aws::{autoscaling, ec2, elb, ssm};
use crate::error::{Error, Result};

/// What has been applied so far (shared with the Ctrl-C handler).
pub type Progress = Arc<Mutex<Vec<String>>>;

/// Applies one change; `refs` learns the ARNs and ids of what it creates.
async fn apply_one(c: &Clients, change: &Change, refs: &mut Observed) -> Result<()> {
    match change {
        Change::CreateLoadBalancer(lb) => create_load_balancer(c, lb, refs).await?,
        Change::CreateTargetGroup(tg) => create_target_group(c, tg, refs).await?,
        Change::ModifyHealthCheck {
            target_group, to, ..
        } => {
            let arn = target_group_arn(target_group, refs)?;
            elb::modify_health_check(&c.elb, &arn, target_group, to).await?
        }
        Change::SetAttributes {
            target_group,
            attributes,
            ..
        } => {
            let arn = target_group_arn(target_group, refs)?;
            elb::set_attributes(&c.elb, &arn, target_group, attributes).await?
        }
        Change::CreateListener(l) | Change::ModifyListener { to: l, .. } => {
            put_listener(c, change, l, refs).await?
        }
        Change::AddTags {
            kind,
            name,
            target,
            tags,
        } => add_tags(c, kind, name, target, tags).await?,
        Change::CreateLaunchTemplate(lt) => ec2::create_launch_template(&c.ec2, lt).await?,
        Change::NewLaunchTemplateVersion {
            name,
            description,
            data,
            ..
        } => ec2::new_default_version(&c.ec2, name, description, data).await?,
        Change::DeleteLeftovers { names } => ssm::delete(&c.ssm, names, |_| {}).await?,
        Change::CreateGroup(g) => create_group(c, g, refs).await?,
        Change::UpdateGroup { name, to, .. } => autoscaling::update_group(&c.asg, name, to).await?,
        Change::AttachTargetGroups { group, arns } => {
            let arns = resolve_all(arns, refs)?;
            autoscaling::attach_target_groups(&c.asg, group, &arns).await?
        }
        Change::PutLifecycleHook { group, hook } => {
            autoscaling::put_hook(&c.asg, group, hook).await?
        }
        Change::SuspendAzRebalance { group } => {
            autoscaling::suspend_az_rebalance(&c.asg, group).await?
        }
        Change::WriteMarker { name, cluster } => write_marker(c, name, cluster).await?,
    }
    Ok(())
}

/// The cluster's NLB; `refs` learns its ARN.
async fn create_load_balancer(
    c: &Clients,
    lb: &desired::LoadBalancer,
    refs: &mut Observed,
) -> Result<()> {
    let arn = elb::create_load_balancer(&c.elb, lb).await?;
    refs.load_balancer = Some(super::plan::ObservedLoadBalancer {
        arn,
        r#type: lb.r#type.clone(),
        scheme: lb.scheme.clone(),
        subnets: lb.subnets.clone(),
        tags: lb.tags.clone(),
    });
    Ok(())
}

/// The API servers' target group; `refs` learns its ARN.
async fn create_target_group(
    c: &Clients,
    tg: &desired::TargetGroup,
    refs: &mut Observed,
) -> Result<()> {
    let arn = elb::create_target_group(&c.elb, tg).await?;
    refs.target_group = Some(super::plan::ObservedTargetGroup {
        arn,
        identity: tg.identity(),
        health_check: tg.health_check(),
        attributes: vec![],
        tags: tg.tags.clone(),
    });
    Ok(())
}

fn target_group_arn(target_group: &str, refs: &Observed) -> Result<String> {
    resolve_ref(&format!("haimg-ref:target-group:{target_group}"), refs)
}

/// Creates the listener, or modifies the one observed (`change` says which); `refs` learns
/// a new one's ARN.
async fn put_listener(
    c: &Clients,
    change: &Change,
    l: &desired::Listener,
    refs: &mut Observed,
) -> Result<()> {
    let mut resolved = l.clone();
    resolved.load_balancer_arn = resolve_ref(&l.load_balancer_arn, refs)?;
    for a in &mut resolved.default_actions {
        a.target_group_arn = resolve_ref(&a.target_group_arn, refs)?;
    }
    match change {
        Change::ModifyListener { arn, .. } => elb::modify_listener(&c.elb, arn, &resolved).await,
        _ => {
            let arn = elb::create_listener(&c.elb, &resolved).await?;
            refs.listener = Some(super::plan::ObservedListener {
                arn,
                protocol: l.protocol.clone(),
                port: l.port,
                target_group_arns: vec![],
                tags: l.tags.clone(),
            });
            Ok(())
        }
    }
}

/// haimg's tags on a resource that lacks them (elbv2, a launch template or a group).
async fn add_tags(c: &Clients, kind: &Kind, name: &str, target: &str, tags: &[Tag]) -> Result<()> {
    match kind {
        Kind::LoadBalancer | Kind::TargetGroup | Kind::Listener => {
            elb::add_tags(&c.elb, target, &format!("{} {name}", kind.noun()), tags).await
        }
        Kind::LaunchTemplate => ec2::add_tags(&c.ec2, target, name, tags).await,
        Kind::AutoScalingGroup => autoscaling::add_tags(&c.asg, target, tags).await,
        Kind::Parameter => unreachable!("parameters are tagged when created"),
    }
}

/// A pool's Auto Scaling group, with its lifecycle hooks, on the target groups created
/// before it.
async fn create_group(c: &Clients, g: &desired::AutoScalingGroup, refs: &Observed) -> Result<()> {
    let mut resolved = g.clone();
    resolved.target_group_arns = resolve_all(&g.target_group_arns, refs)?;
    autoscaling::create_group(&c.asg, &resolved).await
}

fn resolve_all(refs_or_arns: &[String], refs: &Observed) -> Result<Vec<String>> {
    refs_or_arns.iter().map(|a| resolve_ref(a, refs)).collect()
}

/// `P/cluster`: the owner marker, created only if absent.
async fn write_marker(c: &Clients, name: &str, cluster: &str) -> Result<()> {
    let value = serde_json::json!({
        "cluster": cluster,
        "createdAt": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "createdBy": format!("haimg {} up", env!("CARGO_PKG_VERSION")),
    });
    ssm::create_tagged(&c.ssm, name, &value.to_string(), cluster).await?;
    Ok(())
}

/// Applies the changes in order, printing each to stderr as it completes; on failure the
/// error says what was done, what was not, and how to finish or undo it.
pub async fn apply(
    c: &Clients,
    cluster: &str,
    changes: &[Change],
    observed: &Observed,
    progress: Progress,
) -> Result<()> {
    let mut refs = observed.clone();
    for (i, change) in changes.iter().enumerate() {
        let line = change.to_string();
        let head = line.lines().next().unwrap_or_default();
        // Said as it starts: a spinner shows it while the calls are in flight.
        crate::progress::step(format_args!("[{}/{}] {head}", i + 1, changes.len()));
        if let Err(e) = apply_one(c, change, &mut refs).await {
            let not_done: Vec<String> = changes[i..]
                .iter()
                .map(|c| c.to_string().lines().next().unwrap_or_default().to_string())
                .collect();
            return Err(Error::Runtime(format!(
                "{e}\n{}",
                stopped_report(cluster, "up", i, &not_done)
            )));
        }
        progress.lock().unwrap().push(head.to_string());
    }
    Ok(())
}

/// What to tell a user whose `up` stopped part-way.
pub fn stopped_report(cluster: &str, verb: &str, done: usize, not_done: &[String]) -> String {
    format!(
        "{verb} stopped part-way: {done} change(s) made (listed above), {} not made:\n  {}\nEverything haimg made is tagged {CLUSTER_TAG}={cluster}. Run `haimg up` again to finish (it picks up where this stopped), or `haimg down` to remove it.",
        not_done.len(),
        not_done.join("\n  ")
    )
}
