//! `haimg node watch` (service on every node): leave cleanly on scale-in.
//!
//! # Flow
//! 1. Poll IMDS `autoscaling/target-lifecycle-state` every `agent.watchIntervalSeconds`.
//! 2. On `Terminated` (the Auto Scaling group is terminating this instance and holds it in
//!    `Terminating:Wait` for the `haimg-drain` hook): cordon and drain the node with
//!    kubectl, bounded by `agent.drainTimeoutSeconds`;
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
//! - A worker drains itself with its kubelet credentials; eviction needs RBAC that the
//!   kubelet does not have by default (see the README).

use std::time::Duration;

use super::agent::Agent;
use super::config::Role;
use super::etcd::Etcd;
use crate::error::{Error, Result};

pub async fn run(agent: &Agent) -> Result<()> {
    let Some(asg) = agent.cfg.autoscaling.clone() else {
        tracing::info!("not in an Auto Scaling group: nothing to watch");
        return Ok(());
    };
    let interval = Duration::from_secs(agent.cfg.agent.watch_interval_seconds.max(1));
    loop {
        match agent
            .imds
            .get("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
        {
            Ok(s) if s.as_ref().trim() == "Terminated" => {
                tracing::warn!(
                    "the Auto Scaling group is terminating this instance: leaving the cluster"
                );
                return leave(agent, &asg).await;
            }
            Ok(_) => {}
            // 404 until the instance is InService in a group: keep watching.
            Err(e) => {
                tracing::debug!(error = %aws_sdk_ssm::error::DisplayErrorContext(&e), "lifecycle state not available")
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn leave(agent: &Agent, asg: &super::config::NodeAutoscaling) -> Result<()> {
    let name = agent.id.hostname.clone();
    if agent.has_joined() || agent.is_control_plane_ready() {
        let bound = agent.cfg.agent.drain_timeout_seconds;
        let timeout = format!("--timeout={bound}s");
        let steps: [&[&str]; 2] = [
            &["cordon", &name],
            &[
                "drain",
                &name,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                &timeout,
            ],
        ];
        for args in steps {
            if let Err(e) = agent.kubectl(args, Duration::from_secs(bound + 30)).await {
                tracing::error!(error = %e, "draining failed; leaving anyway");
                break;
            }
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
    let (group, hook) = (&asg.group_name, &asg.lifecycle_hook_name);
    aws_sdk_autoscaling::Client::new(&agent.aws)
        .complete_lifecycle_action()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(hook)
        .instance_id(&agent.id.instance_id)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling CompleteLifecycleAction {group}/{hook}"
        )))?;
    tracing::info!("lifecycle action completed");
    Ok(())
}

async fn leave_etcd(agent: &Agent) -> Result<()> {
    let etcd = Etcd::new(&agent.cfg.agent.etcd, &agent.seams.root)?;
    let members = etcd.members_retrying(Duration::from_secs(60)).await?;
    let Some(me) = members.iter().find(|m| m.name == agent.id.hostname) else {
        return Ok(());
    };
    etcd.remove(me.id, Duration::from_secs(60)).await
}
