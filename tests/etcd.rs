//! etcd member clean-up against a real 3-member etcd on loopback.

mod common;

use std::time::Duration;

use common::etcd::EtcdCluster;
use haimg::contract::node_config::EtcdSettings;
use haimg::node::etcd::Etcd;

fn client(c: &EtcdCluster, i: usize) -> Etcd {
    let settings = EtcdSettings {
        endpoint: c.endpoint(i),
        ..EtcdSettings::default()
    };
    Etcd::new(&settings, std::path::Path::new("/")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_member_is_removed_and_the_cluster_keeps_working() {
    let names: Vec<String> = [
        "ip-10-0-1-1.ec2.internal",
        "ip-10-0-1-2.ec2.internal",
        "ip-10-0-1-3.ec2.internal",
    ]
    .map(String::from)
    .to_vec();
    let mut c = EtcdCluster::start(&names);
    let etcd = client(&c, 0);
    let members = etcd.members().await.unwrap();
    assert_eq!(members.len(), 3);
    c.kill(2);
    let dead = members.iter().find(|m| m.name == names[2]).unwrap();
    // A fresh cluster may refuse with "unhealthy cluster" for a few seconds: remove() retries.
    etcd.remove(dead.id, Duration::from_secs(60)).await.unwrap();
    let after = etcd.members().await.unwrap();
    assert_eq!(
        after
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .len(),
        2
    );
    assert!(after.iter().all(|m| m.name != names[2]));
    // Removing it again is not an error (several masters may reconcile at once).
    etcd.remove(dead.id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(c.member_names(1), vec![names[0].clone(), names[1].clone()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconcile_plan_on_real_membership_keeps_quorum() {
    use haimg::node::reconcile::{plan_members, Instance, Owners};
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let mut c = EtcdCluster::start(&names);
    let members = client(&c, 0).members().await.unwrap();
    let inst = |n: &str, state: &str| Instance {
        id: format!("i-{n}"),
        private_dns: n.into(),
        private_ip: "127.0.0.1".into(),
        state: state.into(),
        in_master_group: true,
    };
    // Two of three gone: no removal may happen (it would leave no majority alive).
    let plan = plan_members(
        &members,
        "a",
        &[
            inst("a", "running"),
            inst("b", "terminated"),
            inst("c", "terminated"),
        ],
        &Owners::new(["i-a".into(), "i-b".into(), "i-c".into()], &[]),
    );
    assert!(plan.remove.is_empty() && plan.kept.len() == 2);
    c.kill(2);
    let plan = plan_members(
        &members,
        "a",
        &[
            inst("a", "running"),
            inst("b", "running"),
            inst("c", "terminated"),
        ],
        &Owners::new(["i-a".into(), "i-b".into(), "i-c".into()], &[]),
    );
    assert_eq!(plan.remove.len(), 1);
    client(&c, 0)
        .remove(plan.remove[0].id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(c.member_names(0), vec!["a".to_string(), "b".to_string()]);
}
