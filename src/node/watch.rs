//! `haimg node watch` (service on every node): leave cleanly on scale-in.
//!
//! # Flow
//! 1. Poll IMDS `autoscaling/target-lifecycle-state` every `agent.watchIntervalSeconds`.
//! 2. On `Terminated` (the Auto Scaling group is terminating this instance and holds it in
//!    `Terminating:Wait` for the `haimg-drain` hook): cordon the node and evict its pods
//!    through the Eviction API (disruption budgets honoured, the hook heartbeated while it
//!    waits), bounded by `agent.drainTimeoutSeconds`;
//! 3. a master then removes its own etcd member (the cluster shrinks by one member
//!    cleanly instead of keeping a dead one);
//! 4. complete the lifecycle action (CONTINUE), so EC2 terminates the instance now rather
//!    than at the hook's timeout.
//!
//! # Guarantees
//! - The lifecycle action is completed even when draining fails or times out: a node
//!   never blocks a scale-in for longer than the drain bound.
//!
//! # Caveats
//! - Draining uses the Eviction API directly ([`evict`]): a kubelet may evict the pods
//!   bound to it, but `kubectl drain` also reads DaemonSets, which it may not.

use std::time::Duration;

use super::agent::{paths, Agent};
use super::etcd::{remove_through_peers, Etcd};
use super::evict::{self, Api, Kubeconfig};
use crate::aws::autoscaling;
use crate::contract::node_config::Role;
use crate::error::Result;

pub async fn run(agent: &Agent) -> Result<()> {
    let Some(asg) = agent.cfg.autoscaling.clone() else {
        tracing::info!("not in an Auto Scaling group: nothing to watch");
        return Ok(());
    };
    let interval = Duration::from_secs(agent.cfg.agent.watch_interval_seconds.max(1));
    loop {
        match crate::aws::imds::get(&agent.imds, "autoscaling/target-lifecycle-state").await {
            Ok(s) if s == "Terminated" => {
                tracing::warn!(
                    "the Auto Scaling group is terminating this instance: leaving the cluster"
                );
                return leave(agent, &asg).await;
            }
            Ok(_) => {}
            // 404 until the instance is InService in a group: keep watching.
            Err(e) => {
                tracing::debug!(error = %e, "lifecycle state not available")
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn leave(agent: &Agent, asg: &crate::contract::node_config::NodeAutoscaling) -> Result<()> {
    if agent.has_joined() || agent.is_control_plane_ready() {
        if let Err(e) = drain(agent, asg).await {
            tracing::error!(error = %e, "draining failed; leaving anyway");
        }
    }
    if agent.cfg.role == Role::Master && agent.is_control_plane_ready() {
        match leave_etcd(agent).await {
            Ok(()) => tracing::info!("removed the local etcd member"),
            Err(e) => {
                tracing::error!(error = %e, "could not remove the local etcd member; reconcile on the other masters will")
            }
        }
    }
    autoscaling::complete_lifecycle_action(
        &aws_sdk_autoscaling::Client::new(&agent.aws),
        &asg.group_name,
        &asg.lifecycle_hook_name,
        &agent.id.instance_id,
    )
    .await?;
    tracing::info!("lifecycle action completed");
    Ok(())
}

/// Evicts this node's pods through the Eviction API with the node's own credentials
/// (`kubectl drain` needs to read DaemonSets, which a kubelet may not), heartbeating the
/// lifecycle action while a disruption budget or a grace period makes it wait.
async fn drain(agent: &Agent, asg: &crate::contract::node_config::NodeAutoscaling) -> Result<()> {
    let conf = if agent.is_control_plane_ready() {
        paths::ADMIN_CONF
    } else {
        paths::KUBELET_CONF
    };
    let kc = Kubeconfig::load(&agent.path(conf), &agent.seams.root)?;
    let api = Api::new(&kc)?;
    let s = &agent.cfg.agent;
    let client = aws_sdk_autoscaling::Client::new(&agent.aws);
    let heartbeat = || async {
        let sent = autoscaling::record_heartbeat(
            &client,
            &asg.group_name,
            &asg.lifecycle_hook_name,
            &agent.id.instance_id,
        )
        .await;
        match sent {
            Ok(()) => tracing::info!("lifecycle action heartbeat recorded"),
            Err(e) => tracing::warn!(error = %e, "lifecycle action heartbeat failed"),
        }
    };
    let done = evict::drain(
        &api,
        &agent.id.hostname,
        Duration::from_secs(s.drain_timeout_seconds),
        Duration::from_secs(s.lifecycle_heartbeat_seconds),
        heartbeat,
    )
    .await?;
    tracing::info!(evicted = ?done.evicted, skipped = ?done.skipped, "drained");
    Ok(())
}

async fn leave_etcd(agent: &Agent) -> Result<()> {
    let settings = &agent.cfg.agent.etcd;
    let etcd = Etcd::new(settings, &agent.seams.root)?;
    let members = etcd.members_retrying(Duration::from_secs(60)).await?;
    let Some(me) = members.iter().find(|m| m.name == agent.id.hostname) else {
        return Ok(());
    };
    // 30 s per peer: etcd settles within seconds after a loss; beyond that the next peer,
    // and reconcile on the masters that stay, do better than waiting here.
    remove_through_peers(
        settings,
        &agent.seams.root,
        &members,
        me,
        Duration::from_secs(30),
    )
    .await
}
