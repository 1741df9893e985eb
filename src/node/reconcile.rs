//! `haimg node reconcile` (systemd timer on masters): clean up after instances that are gone.
//!
//! # Flow
//! 1. Not an initialized control-plane node: nothing to do.
//! 2. List etcd members, the cluster's EC2 instances (any state) and the masters' Auto
//!    Scaling group.
//! 3. Plan ([`plan_members`], pure). EC2 recycles private addresses and the DNS names made
//!    from them, and lists terminated instances for about an hour, so a member is matched
//!    to the *live* instance at its address (peer URL, or name), and that instance must
//!    own it: it wrote `P/members/<instance-id>` before it became a member, or its Node
//!    (by providerID) exists. A member is dead when no live instance has its address, when
//!    that instance left the masters' group, or when it never became a member (the member
//!    is its predecessor's). Never the local member. Remove dead members one at a time,
//!    and only while a majority of the remaining members stays alive.
//! 4. Remove them (etcd refuses changes for a few seconds after startup: retried, bounded).
//! 5. Delete Node objects by their providerID's instance: terminated, or unknown to EC2 and
//!    NotReady. A Node is never matched by name alone while a live instance has that name.
//! 6. Publish the membership health in `P/state` (`etcd.dead`, `checkedAt`), which a
//!    replacement master waits on before it joins.
//!
//! # Guarantees
//! - Never removes the local member, never a member whose instance is alive and in the
//!   group, and never so many that the remaining members lose quorum.
//! - A healthy Node that haimg cannot match to an instance is never deleted.
//!
//! # Caveats
//! - Several masters may run it at once; removals are idempotent ("member not found" is
//!   success), and the last writer of `P/state` wins with the same facts.

use std::collections::HashSet;
use std::time::Duration;

use super::agent::Agent;
use super::etcd::{removal_keeps_quorum, Etcd, Member};
use crate::aws::{autoscaling, ec2};
use crate::contract::artifacts::CLUSTER_TAG;
use crate::contract::join::{EtcdHealth, MemberRecord, State};
use crate::contract::layout;
use crate::error::{Error, Result};

/// An EC2 instance of this cluster, as reconcile sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub private_dns: String,
    pub private_ip: String,
    /// EC2 state name: pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    /// Whether it is in the masters' Auto Scaling group.
    pub in_master_group: bool,
}

impl Instance {
    fn is_gone(&self) -> bool {
        matches!(
            self.state.as_str(),
            "shutting-down" | "terminated" | "stopping" | "stopped"
        )
    }
}

/// What reconcile will do to etcd.
#[derive(Debug, Default, PartialEq)]
pub struct MemberPlan {
    pub remove: Vec<Member>,
    /// Dead members left in place because removing them would break quorum.
    pub kept: Vec<Member>,
}

/// Instance ids that have become (or are becoming) etcd members: their
/// `P/members/<id>` records, and the instances of Ready Nodes (a Node's providerID names
/// its instance; a Ready Node without one is a node of an older haimg, trusted by name).
#[derive(Debug, Default)]
pub struct Owners {
    pub ids: HashSet<String>,
    pub legacy_names: HashSet<String>,
}

impl Owners {
    pub fn new(records: impl IntoIterator<Item = String>, nodes: &[NodeObject]) -> Owners {
        let mut o = Owners {
            ids: records.into_iter().collect(),
            legacy_names: HashSet::new(),
        };
        for n in nodes.iter().filter(|n| n.ready) {
            match n.instance_id() {
                Some(id) => o.ids.insert(id.to_string()),
                None => o.legacy_names.insert(n.name.clone()),
            };
        }
        o
    }
    fn owns(&self, i: &Instance) -> bool {
        self.ids.contains(&i.id) || self.legacy_names.contains(&i.private_dns)
    }
}

/// Why a member counts as dead, or `None` when it is alive.
fn dead_reason(m: &Member, instances: &[Instance], owners: &Owners) -> Option<String> {
    // By name (the node name, which is the private DNS name) when an instance has it,
    // else by the peer URL's address. EC2 hands both on to a replacement and keeps
    // listing the terminated predecessor: a live instance comes first.
    let by_name = |i: &&Instance| !m.name.is_empty() && i.private_dns == m.name;
    let by_ip = |i: &&Instance| m.peer_host().is_some_and(|h| i.private_ip == h);
    let candidates: Vec<&Instance> = if instances.iter().any(|i| by_name(&i)) {
        instances.iter().filter(by_name).collect()
    } else {
        instances.iter().filter(by_ip).collect()
    };
    match candidates.iter().copied().find(|i| !i.is_gone()) {
        Some(i) if !i.in_master_group => Some(format!(
            "instance {} is no longer in the masters' Auto Scaling group",
            i.id
        )),
        // Added and not yet started: a master joining right now.
        Some(_) if m.name.is_empty() => None,
        Some(i) if owners.owns(i) => None,
        Some(i) => Some(format!(
            "instance {} has this member's address but never became a member: the member is its predecessor's",
            i.id
        )),
        None => match candidates.first() {
            Some(i) => Some(format!("instance {} is {}", i.id, i.state)),
            None => Some("no instance of this cluster matches it".into()),
        },
    }
}

/// Pure planning: which members to remove, in order, keeping quorum and the local member.
pub fn plan_members(
    members: &[Member],
    local_name: &str,
    instances: &[Instance],
    owners: &Owners,
) -> MemberPlan {
    let mut plan = MemberPlan::default();
    let dead: Vec<&Member> = members
        .iter()
        .filter(|m| m.name != local_name && dead_reason(m, instances, owners).is_some())
        .collect();
    let mut total = members.len();
    let alive = total - dead.len();
    for m in dead {
        if removal_keeps_quorum(total, alive) {
            plan.remove.push(m.clone());
            total -= 1;
        } else {
            plan.kept.push(m.clone());
        }
    }
    plan
}

/// A Node object as reconcile sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeObject {
    pub name: String,
    pub ready: bool,
    /// `aws:///<zone>/<instance-id>`, set by haimg's kubelet flags.
    pub provider_id: Option<String>,
}

impl NodeObject {
    /// The instance id of the providerID.
    pub fn instance_id(&self) -> Option<&str> {
        self.provider_id
            .as_deref()?
            .rsplit('/')
            .next()
            .filter(|id| id.starts_with("i-"))
    }
}

/// Pure planning: Node objects to delete.
pub fn plan_nodes(nodes: &[NodeObject], local_name: &str, instances: &[Instance]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.name != local_name)
        .filter(|n| match n.instance_id() {
            Some(id) => match instances.iter().find(|i| i.id == id) {
                Some(i) => i.is_gone(),
                // Terminated more than about an hour ago: EC2 no longer lists it.
                None => !n.ready,
            },
            None => {
                let named = |i: &&Instance| i.private_dns == n.name;
                if instances.iter().filter(|i| !i.is_gone()).any(|i| named(&i)) {
                    false
                } else if instances.iter().any(|i| named(&i)) {
                    true
                } else {
                    !n.ready
                }
            }
        })
        .map(|n| n.name.clone())
        .collect()
}

pub async fn run(agent: &Agent) -> Result<()> {
    if !agent.is_control_plane_ready() {
        tracing::info!("not an initialized control-plane node: nothing to reconcile");
        return Ok(());
    }
    let Some(asg) = &agent.cfg.autoscaling else {
        tracing::info!(
            "masters outside an Auto Scaling group (VIP mode): membership is managed by hand"
        );
        return Ok(());
    };
    let etcd = Etcd::new(&agent.cfg.agent.etcd, &agent.seams.root)?;
    let members = etcd.members().await?;
    // Read after the members: a member added since has its record (or Node) by now.
    let records = member_records(agent).await?;
    let nodes = node_objects(agent).await?;
    let instances = instances(agent, &asg.group_name).await?;
    let owners = Owners::new(records.iter().map(|r| r.instance_id.clone()), &nodes);
    let plan = plan_members(&members, &agent.id.hostname, &instances, &owners);
    for m in &plan.remove {
        let why = dead_reason(m, &instances, &owners).unwrap_or_default();
        tracing::warn!(member = %m.name, id = format!("{:x}", m.id), reason = %why, "removing dead etcd member");
        etcd.remove(m.id, Duration::from_secs(60)).await?;
    }
    for m in &plan.kept {
        tracing::error!(member = %m.name, "dead etcd member kept: removing it would leave no majority alive; needs a human");
    }

    for name in plan_nodes(&nodes, &agent.id.hostname, &instances) {
        tracing::warn!(node = %name, "deleting the Node object of a gone instance");
        agent
            .kubectl(
                &["delete", "node", &name, "--ignore-not-found"],
                Duration::from_secs(60),
            )
            .await?;
    }

    let after = etcd.members().await?;
    let dead: Vec<String> = after
        .iter()
        .filter(|m| m.name != agent.id.hostname && dead_reason(m, &instances, &owners).is_some())
        .map(display_name)
        .collect();
    // Records of terminated instances are done with (instance ids are never reused).
    for r in records.iter().filter(|r| {
        instances
            .iter()
            .any(|i| i.id == r.instance_id && i.state == "terminated")
    }) {
        agent.store.delete(&layout::member(&r.instance_id)).await?;
    }
    if let Some(mut state) = agent.store.get::<State>(layout::STATE).await? {
        state.etcd = Some(EtcdHealth {
            members: after.len(),
            dead,
            checked_at: super::clock::now(),
            checked_by: agent.id.instance_id.clone(),
        });
        agent.store.put(layout::STATE, &state, false, true).await?;
    }
    Ok(())
}

fn display_name(m: &Member) -> String {
    if m.name.is_empty() {
        format!("{:x}", m.id)
    } else {
        m.name.clone()
    }
}

/// The cluster's instances in every state, and which are in the masters' group.
async fn instances(agent: &Agent, group: &str) -> Result<Vec<Instance>> {
    let ec2 = aws_sdk_ec2::Client::new(&agent.aws);
    let asg = aws_sdk_autoscaling::Client::new(&agent.aws);
    let in_group: HashSet<String> = autoscaling::instance_ids(&asg, group)
        .await?
        .into_iter()
        .collect();
    Ok(
        ec2::tagged_instances(&ec2, CLUSTER_TAG, agent.cfg.cluster.as_str())
            .await?
            .into_iter()
            .map(|i| Instance {
                in_master_group: in_group.contains(&i.id),
                id: i.id,
                private_dns: i.private_dns,
                private_ip: i.private_ip,
                state: i.state,
            })
            .collect(),
    )
}

async fn member_records(agent: &Agent) -> Result<Vec<MemberRecord>> {
    Ok(agent
        .store
        .list("members")
        .await?
        .into_iter()
        .filter_map(|(name, value)| match serde_json::from_str(&value) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(parameter = %name, error = %e, "ignoring a member record haimg did not write");
                None
            }
        })
        .collect())
}

async fn node_objects(agent: &Agent) -> Result<Vec<NodeObject>> {
    let out = agent
        .kubectl(&["get", "nodes", "-o", "json"], Duration::from_secs(60))
        .await?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| Error::Runtime(format!("kubectl get nodes: {e}")))?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| NodeObject {
            name: n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ready: n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            provider_id: n["spec"]["providerID"].as_str().map(str::to_string),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, ip: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{ip}:2380")],
            client_urls: vec![],
            is_learner: false,
        }
    }
    /// Every instance of these tests has become a member (wrote its record).
    fn all_own(instances: &[Instance]) -> Owners {
        Owners::new(instances.iter().map(|i| i.id.clone()), &[])
    }
    fn node(name: &str, ready: bool, instance: Option<&str>) -> NodeObject {
        NodeObject {
            name: name.into(),
            ready,
            provider_id: instance.map(|i| format!("aws:///us-west-2a/{i}")),
        }
    }
    fn inst(id: &str, name: &str, ip: &str, state: &str, in_group: bool) -> Instance {
        Instance {
            id: id.into(),
            private_dns: name.into(),
            private_ip: ip.into(),
            state: state.into(),
            in_master_group: in_group,
        }
    }

    #[test]
    fn removes_the_dead_member_of_three() {
        let members = [
            member(1, "a", "10.0.0.1"),
            member(2, "b", "10.0.0.2"),
            member(3, "c", "10.0.0.3"),
        ];
        let instances = [
            inst("i-a", "a", "10.0.0.1", "running", true),
            inst("i-b", "b", "10.0.0.2", "running", true),
            inst("i-c", "c", "10.0.0.3", "terminated", true),
        ];
        let plan = plan_members(&members, "a", &instances, &all_own(&instances));
        assert_eq!(plan.remove.iter().map(|m| m.id).collect::<Vec<_>>(), [3]);
        assert!(plan.kept.is_empty());
    }

    #[test]
    fn never_the_local_member_and_never_below_quorum() {
        let members = [
            member(1, "a", "10.0.0.1"),
            member(2, "b", "10.0.0.2"),
            member(3, "c", "10.0.0.3"),
        ];
        // b and c gone: removing either leaves 2 members with 1 alive: keep both.
        let instances = [inst("i-a", "a", "10.0.0.1", "running", true)];
        let plan = plan_members(&members, "a", &instances, &all_own(&instances));
        assert!(plan.remove.is_empty());
        assert_eq!(plan.kept.len(), 2);
        // The local member is never planned, even if EC2 says nothing about it.
        let plan = plan_members(&members, "a", &[], &Owners::default());
        assert!(plan.remove.iter().chain(&plan.kept).all(|m| m.name != "a"));
    }

    #[test]
    fn five_members_two_dead_both_removed() {
        let members: Vec<Member> = (1..=5)
            .map(|i| member(i, &format!("m{i}"), &format!("10.0.0.{i}")))
            .collect();
        let instances: Vec<Instance> = (1..=3)
            .map(|i| {
                inst(
                    &format!("i-{i}"),
                    &format!("m{i}"),
                    &format!("10.0.0.{i}"),
                    "running",
                    true,
                )
            })
            .collect();
        let plan = plan_members(&members, "m1", &instances, &all_own(&instances));
        assert_eq!(plan.remove.len(), 2);
    }

    #[test]
    fn detached_instance_and_unstarted_member() {
        let members = [
            member(1, "a", "10.0.0.1"),
            member(2, "b", "10.0.0.2"),
            member(3, "", "10.0.0.9"),
            member(4, "", "10.0.0.4"),
        ];
        let instances = [
            inst("i-a", "a", "10.0.0.1", "running", true),
            inst("i-b", "b", "10.0.0.2", "running", false),
            inst("i-d", "d", "10.0.0.4", "running", true),
        ];
        let plan = plan_members(&members, "a", &instances, &all_own(&instances));
        let removed: Vec<u64> = plan.remove.iter().map(|m| m.id).collect();
        // b: detached from the group; 3: never started, its IP matches nothing. 4 is a
        // replacement that is joining right now: keep it.
        assert!(
            removed.contains(&2) && removed.contains(&3) && !removed.contains(&4),
            "{removed:?}"
        );
    }

    #[test]
    fn nodes_of_gone_instances_are_deleted_healthy_unknown_ones_kept() {
        let nodes = [
            node("a", true, Some("i-a")),
            node("gone", false, Some("i-g")),
            node("unknown-ready", true, None),
            node("unknown-notready", false, None),
            node("forgotten", false, Some("i-forgotten")),
        ];
        let instances = [
            inst("i-a", "a", "10.0.0.1", "running", true),
            inst("i-g", "gone", "10.0.0.2", "terminated", false),
        ];
        assert_eq!(
            plan_nodes(&nodes, "a", &instances),
            ["gone", "unknown-notready", "forgotten"]
        );
    }

    /// EC2 gave the replacement its predecessor's address, and so its DNS name, and still
    /// lists the terminated predecessor.
    fn recycled() -> [Instance; 3] {
        [
            inst("i-a", "a", "10.0.0.1", "running", true),
            inst("i-old", "ip-10-0-0-5", "10.0.0.5", "terminated", true),
            inst("i-new", "ip-10-0-0-5", "10.0.0.5", "running", true),
        ]
    }

    #[test]
    fn a_replacement_at_the_same_address_keeps_its_node_and_the_dead_node_goes() {
        let instances = recycled();
        // Before the replacement joins: the Node is the predecessor's.
        let before = [
            node("a", true, Some("i-a")),
            node("ip-10-0-0-5", false, Some("i-old")),
        ];
        assert_eq!(plan_nodes(&before, "a", &instances), ["ip-10-0-0-5"]);
        // After: the same name is the live replacement's Node, listed before or after
        // its terminated predecessor in EC2's answer.
        let after = [
            node("a", true, Some("i-a")),
            node("ip-10-0-0-5", true, Some("i-new")),
        ];
        assert!(plan_nodes(&after, "a", &instances).is_empty());
        let mut reversed = instances.clone();
        reversed.reverse();
        assert!(plan_nodes(&after, "a", &reversed).is_empty());
        // A Node of an older haimg (no providerID) is kept while a live instance has its name.
        let legacy = [node("ip-10-0-0-5", false, None)];
        assert!(plan_nodes(&legacy, "a", &instances).is_empty());
    }

    #[test]
    fn the_predecessors_member_at_a_recycled_address_is_dead_the_replacements_is_not() {
        let instances = recycled();
        let members = [
            member(1, "a", "10.0.0.1"),
            member(2, "b", "10.0.0.2"),
            member(5, "ip-10-0-0-5", "10.0.0.5"),
        ];
        let with_b = |mut v: Vec<Instance>| {
            v.push(inst("i-b", "b", "10.0.0.2", "running", true));
            v
        };
        let instances = with_b(instances.to_vec());
        // The replacement has not joined: no record, no Node of its own.
        let owners = Owners::new(["i-a".into(), "i-b".into(), "i-old".into()], &[]);
        let plan = plan_members(&members, "a", &instances, &owners);
        assert_eq!(plan.remove.iter().map(|m| m.id).collect::<Vec<_>>(), [5]);
        let why = dead_reason(&members[2], &instances, &owners).unwrap();
        assert!(
            why.contains("i-new") && why.contains("predecessor"),
            "{why}"
        );
        // It wrote its record and joined: the member at that address is its own.
        let owners = Owners::new(
            ["i-a".into(), "i-b".into(), "i-old".into(), "i-new".into()],
            &[],
        );
        assert!(plan_members(&members, "a", &instances, &owners)
            .remove
            .is_empty());
        // An older agent wrote no record, but the replacement's Node names its instance.
        let owners = Owners::new(
            ["i-a".into(), "i-b".into()],
            &[node("ip-10-0-0-5", true, Some("i-new"))],
        );
        assert!(plan_members(&members, "a", &instances, &owners)
            .remove
            .is_empty());
    }
}
