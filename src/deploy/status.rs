//! `haimg status`: what runs, whether it is healthy, and how old the join material is.
//!
//! A [`Snapshot`] is read from AWS (`read`) and judged by a pure function (`problems`),
//! which `up --wait` uses too. The join material's timestamps come from `P/join/times`, a
//! plain String beside it: `status` never reads, decrypts or needs a right to the secrets
//! (`iam/status-policy.json` is all it needs).

use std::time::SystemTime;

use serde::Serialize;

use super::desired::Desired;
use super::observe::Clients;
pub use crate::aws::observed::{Instance, Target};
use crate::contract::join::{PublishedTimes, State};
use crate::contract::layout;
use crate::error::Result;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub name: String,
    pub master: bool,
    pub exists: bool,
    pub min_size: i32,
    pub max_size: i32,
    pub desired_capacity: i32,
    pub instances: Vec<Instance>,
}

impl Group {
    pub fn in_service(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.lifecycle_state == "InService" && i.health == "Healthy")
            .count()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetGroup {
    pub name: String,
    pub exists: bool,
    pub targets: Vec<Target>,
}

impl TargetGroup {
    pub fn healthy(&self) -> usize {
        self.targets.iter().filter(|t| t.state == "healthy").count()
    }
}

/// Timestamps of one join parameter; never its secrets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTimes {
    pub parameter: String,
    #[serde(with = "crate::contract::join::rfc3339")]
    pub issued_at: SystemTime,
    #[serde(with = "crate::contract::join::rfc3339")]
    pub expires_at: SystemTime,
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub cluster: String,
    pub region: String,
    pub groups: Vec<Group>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_group: Option<TargetGroup>,
    /// Whether join material lives in SSM (not with static credentials).
    pub ssm: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    pub join: Vec<JoinTimes>,
    /// Why the cluster is not healthy; empty when it is.
    pub problems: Vec<String>,
    pub healthy: bool,
}

/// Reads everything `status` shows.
pub async fn read(c: &Clients, d: &Desired, region: &str, master_count: usize) -> Result<Snapshot> {
    let names: Vec<String> = d
        .groups
        .iter()
        .map(|g| g.asg.auto_scaling_group_name.clone())
        .collect();
    let found = crate::aws::autoscaling::groups(&c.asg, &names).await?;
    let groups = d
        .groups
        .iter()
        .map(|g| {
            let name = &g.asg.auto_scaling_group_name;
            let have = found.iter().find(|(n, _, _)| n == name);
            Group {
                name: name.clone(),
                master: g.asg.is_master(),
                exists: have.is_some(),
                min_size: have.map_or(g.asg.min_size, |h| h.1.settings.min_size),
                max_size: have.map_or(g.asg.max_size, |h| h.1.settings.max_size),
                desired_capacity: have
                    .map_or(g.asg.desired_capacity, |h| h.1.settings.desired_capacity),
                instances: have
                    .map(|(_, _, instances)| instances.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let target_group = match &d.api {
        None => None,
        Some(api) => {
            let name = &api.target_group.name;
            let targets = crate::aws::elb::targets(&c.elb, name).await?;
            Some(TargetGroup {
                name: name.clone(),
                exists: targets.is_some(),
                targets: targets.unwrap_or_default(),
            })
        }
    };
    let mut state = None;
    let mut join = Vec::new();
    if let Some(prefix) = &d.ssm_prefix {
        let store = crate::aws::ssm::Store::new(c.ssm.clone(), prefix, "");
        state = store.get_plain::<State>(layout::STATE).await?;
        if let Some(t) = store
            .get_plain::<PublishedTimes>(layout::JOIN_TIMES)
            .await?
        {
            for (rel, expires_at) in [
                (layout::JOIN_CONTROL_PLANE, t.control_plane_expires_at),
                (layout::JOIN_WORKER, t.worker_expires_at),
            ] {
                join.push(JoinTimes {
                    parameter: store.name(rel),
                    issued_at: t.issued_at,
                    expires_at,
                    generation: t.generation,
                });
            }
        }
    }
    let mut s = Snapshot {
        cluster: d.cluster.clone(),
        region: region.to_string(),
        groups,
        target_group,
        ssm: d.ssm_prefix.is_some(),
        state,
        join,
        problems: vec![],
        healthy: false,
    };
    s.problems = problems(&s, master_count, SystemTime::now());
    s.healthy = s.problems.is_empty();
    Ok(s)
}

/// Why a snapshot is not healthy (empty: healthy).
pub fn problems(s: &Snapshot, master_count: usize, now: SystemTime) -> Vec<String> {
    let mut p = Vec::new();
    for g in &s.groups {
        if !g.exists {
            p.push(format!(
                "auto scaling group {} does not exist (run `haimg up`)",
                g.name
            ));
        } else if g.in_service() < g.desired_capacity as usize {
            p.push(format!(
                "auto scaling group {}: {}/{} instances in service",
                g.name,
                g.in_service(),
                g.desired_capacity
            ));
        }
    }
    if let Some(tg) = &s.target_group {
        if !tg.exists {
            p.push(format!(
                "target group {} does not exist (run `haimg up`)",
                tg.name
            ));
        } else if tg.healthy() < master_count {
            p.push(format!(
                "target group {}: {}/{master_count} API servers healthy",
                tg.name,
                tg.healthy()
            ));
        }
    }
    if s.ssm {
        match &s.state {
            None => p.push("no cluster state yet: no control-plane node has initialized".into()),
            Some(st) => {
                if st.phase != crate::contract::join::Phase::Ready {
                    p.push(format!(
                        "phase {} (by {} since {})",
                        phase_name(st),
                        st.initialized_by,
                        humantime::format_rfc3339_seconds(st.initialized_at)
                    ));
                }
                if let Some(e) = &st.etcd {
                    if !e.dead.is_empty() {
                        p.push(format!("etcd lists dead member(s) {:?}", e.dead));
                    }
                }
            }
        }
        if s.state
            .as_ref()
            .is_some_and(|st| st.phase == crate::contract::join::Phase::Ready)
        {
            for want in [layout::JOIN_CONTROL_PLANE, layout::JOIN_WORKER] {
                match s.join.iter().find(|j| j.parameter.ends_with(want)) {
                    None => p.push(format!("no {want} material: nodes cannot join")),
                    Some(j) if j.expires_at <= now => p.push(format!(
                        "{want} material expired at {}: nodes cannot join until `haimg node refresh` rotates it",
                        humantime::format_rfc3339_seconds(j.expires_at)
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    p
}

fn phase_name(s: &State) -> &'static str {
    match s.phase {
        crate::contract::join::Phase::Initializing => "initializing",
        crate::contract::join::Phase::Ready => "ready",
    }
}

fn relative(t: SystemTime, now: SystemTime) -> String {
    let (d, ahead) = match t.duration_since(now) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let secs = d.as_secs();
    let rounded = if secs >= 60 { secs / 60 * 60 } else { secs };
    let s = humantime::format_duration(std::time::Duration::from_secs(rounded));
    if ahead {
        format!("in {s}")
    } else {
        format!("{s} ago")
    }
}

/// The text report.
pub fn text(s: &Snapshot, now: SystemTime) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cluster {} ({}): {}",
        s.cluster,
        s.region,
        if s.healthy { "healthy" } else { "DEGRADED" }
    );
    state_text(&mut o, s, now);
    groups_text(&mut o, s);
    if let Some(tg) = &s.target_group {
        target_group_text(&mut o, tg);
    }
    for p in &s.problems {
        let _ = writeln!(o, "problem: {p}");
    }
    o
}

/// The phase, etcd's health and the join material's ages (or that it is static).
fn state_text(o: &mut String, s: &Snapshot, now: SystemTime) {
    use std::fmt::Write;
    if s.ssm {
        match &s.state {
            None => {
                let _ = writeln!(o, "phase: not initialized");
            }
            Some(st) => {
                let _ = writeln!(
                    o,
                    "phase: {}, initialized by {} at {}",
                    phase_name(st),
                    st.initialized_by,
                    humantime::format_rfc3339_seconds(st.initialized_at)
                );
                if let Some(e) = &st.etcd {
                    let _ = writeln!(
                        o,
                        "etcd: {} member(s), {} dead, checked {} by {}",
                        e.members,
                        e.dead.len(),
                        relative(e.checked_at, now),
                        e.checked_by
                    );
                }
            }
        }
        for j in &s.join {
            let _ = writeln!(
                o,
                "join material {}: generation {}, issued {} ({}), expires {} ({})",
                j.parameter,
                j.generation,
                humantime::format_rfc3339_seconds(j.issued_at),
                relative(j.issued_at, now),
                humantime::format_rfc3339_seconds(j.expires_at),
                relative(j.expires_at, now)
            );
        }
    } else {
        let _ = writeln!(o, "join material: static credentials (not in SSM)");
    }
}

/// Each group's instances in service, and each instance.
fn groups_text(o: &mut String, s: &Snapshot) {
    use std::fmt::Write;
    for g in &s.groups {
        if !g.exists {
            let _ = writeln!(o, "auto scaling group {}: missing", g.name);
            continue;
        }
        let _ = writeln!(
            o,
            "auto scaling group {}: {}/{} in service (min {}, max {})",
            g.name,
            g.in_service(),
            g.desired_capacity,
            g.min_size,
            g.max_size
        );
        for i in &g.instances {
            let _ = writeln!(
                o,
                "  {}  {}  {}  {}  launch template version {}",
                i.id, i.availability_zone, i.lifecycle_state, i.health, i.launch_template_version
            );
        }
    }
}

/// The API's targets and their health.
fn target_group_text(o: &mut String, tg: &TargetGroup) {
    use std::fmt::Write;
    if tg.exists {
        let _ = writeln!(
            o,
            "target group {}: {}/{} healthy",
            tg.name,
            tg.healthy(),
            tg.targets.len()
        );
        for t in &tg.targets {
            let _ = writeln!(
                o,
                "  {}  {}{}",
                t.id,
                t.state,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
    } else {
        let _ = writeln!(o, "target group {}: missing", tg.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::join::{EtcdHealth, Phase};
    use std::time::Duration;

    fn snapshot() -> Snapshot {
        let now = SystemTime::now();
        Snapshot {
            cluster: "demo".into(),
            region: "us-west-2".into(),
            groups: vec![Group {
                name: "demo-master".into(),
                master: true,
                exists: true,
                min_size: 3,
                max_size: 3,
                desired_capacity: 3,
                instances: (0..3)
                    .map(|i| Instance {
                        id: format!("i-{i}"),
                        availability_zone: "us-west-2a".into(),
                        lifecycle_state: "InService".into(),
                        health: "Healthy".into(),
                        launch_template_version: "1".into(),
                    })
                    .collect(),
            }],
            target_group: Some(TargetGroup {
                name: "demo-api".into(),
                exists: true,
                targets: (0..3)
                    .map(|i| Target {
                        id: format!("i-{i}"),
                        state: "healthy".into(),
                        reason: None,
                    })
                    .collect(),
            }),
            ssm: true,
            state: Some(State {
                phase: Phase::Ready,
                initialized_by: "i-0".into(),
                initialized_at: now - Duration::from_secs(3600),
                etcd: Some(EtcdHealth {
                    members: 3,
                    dead: vec![],
                    checked_at: now,
                    checked_by: "i-1".into(),
                }),
            }),
            join: ["control-plane", "worker"]
                .iter()
                .map(|k| JoinTimes {
                    parameter: format!("/haimg/demo/join/{k}"),
                    issued_at: now - Duration::from_secs(600),
                    expires_at: now + Duration::from_secs(3000),
                    generation: 2,
                })
                .collect(),
            problems: vec![],
            healthy: true,
        }
    }

    #[test]
    fn a_full_cluster_is_healthy() {
        let s = snapshot();
        assert!(problems(&s, 3, SystemTime::now()).is_empty());
        let t = text(&s, SystemTime::now());
        assert!(t.starts_with("cluster demo (us-west-2): healthy\n"), "{t}");
        assert!(t.contains("phase: ready, initialized by i-0 at "), "{t}");
        assert!(t.contains("generation 2, issued "), "{t}");
        assert!(
            t.contains("auto scaling group demo-master: 3/3 in service"),
            "{t}"
        );
        assert!(t.contains("target group demo-api: 3/3 healthy"), "{t}");
    }

    #[test]
    fn each_degradation_is_named() {
        let now = SystemTime::now();
        let mut s = snapshot();
        s.groups[0].instances[2].lifecycle_state = "Terminating:Wait".into();
        s.target_group.as_mut().unwrap().targets[1].state = "unhealthy".into();
        s.join[1].expires_at = now - Duration::from_secs(1);
        s.state.as_mut().unwrap().etcd.as_mut().unwrap().dead = vec!["ip-10-0-1-5".into()];
        let p = problems(&s, 3, now);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains("2/3 instances in service"));
        assert!(p[1].contains("2/3 API servers healthy"));
        assert!(p[2].contains("dead member"));
        assert!(p[3].contains("join/worker material expired"));

        let mut s = snapshot();
        s.state = None;
        assert_eq!(
            problems(&s, 3, now),
            vec!["no cluster state yet: no control-plane node has initialized"]
        );
        s.ssm = false;
        assert!(
            problems(&s, 3, now).is_empty(),
            "static credentials need no SSM state"
        );
    }
}
