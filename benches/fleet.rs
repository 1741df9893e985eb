//! Fleet benchmark: N worker agents (default 100, `HAIMG_BENCH_NODES`) wait for join
//! material with the production polling settings; then the first master initializes and
//! publishes. Measures, against moto on loopback:
//! - the time from publication of `P/join/worker` to the last `kubeadm join` start;
//! - SSM calls per second over that period (moto's request recorder);
//! - the agent's own overhead on the critical path: process start to `kubeadm join`
//!   launch, for a node that finds material at once (10 runs).
//!
//! Run: `cargo bench --bench fleet --profile dev` (numbers are printed as Markdown).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant, SystemTime};

use common::fleet::*;
use haimg::contract::node_config::AgentSettings;

fn log_time_of(log: &str, needle: &str) -> Option<SystemTime> {
    log.lines().find(|l| l.contains(needle)).and_then(|l| {
        humantime::parse_rfc3339_weak(l.split_whitespace().next()?.trim_end_matches('Z')).ok()
    })
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("HAIMG_BENCH_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let c = cluster(1, n as i32).await;
    let f = &c.fleet;
    let production = |cfg: &mut haimg::contract::node_config::NodeConfig| {
        cfg.agent = AgentSettings {
            join_timeout_seconds: 1800,
            ..AgentSettings::default()
        }
    };
    let workers: Vec<Node> = c
        .workers
        .iter()
        .enumerate()
        .map(|(i, id)| f.node(&format!("w{i}"), id.clone(), &node_yaml(false, production)))
        .collect();
    let http = |method: &str, path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-X", method, &format!("{}{path}", f.moto.url())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    http("POST", "/moto-api/recorder/start-recording");
    let mut children: Vec<_> = workers.iter().map(|w| f.spawn(w, "bootstrap")).collect();
    eprintln!("{n} workers waiting; letting their backoff reach its cap…");
    tokio::time::sleep(Duration::from_secs(45)).await;

    let master = f.node("m0", c.masters[0].clone(), &node_yaml(true, production));
    let mut m = f.spawn(&master, "bootstrap");
    assert!(
        wait_child(&mut m, Duration::from_secs(120))
            .unwrap()
            .success(),
        "{}",
        f.log(&master, "bootstrap")
    );
    let published = log_time_of(&f.log(&master, "bootstrap"), "cluster initialized")
        .expect("publication logged");
    for (w, child) in workers.iter().zip(children.iter_mut()) {
        assert!(
            wait_child(child, Duration::from_secs(300)).is_some_and(|s| s.success()),
            "{}",
            f.log(w, "bootstrap")
        );
    }
    let launches: Vec<SystemTime> = workers
        .iter()
        .filter_map(|w| log_time_of(&f.log(w, "bootstrap"), "join --config"))
        .collect();
    assert_eq!(launches.len(), n);
    let last = *launches.iter().max().unwrap();
    let spread = last.duration_since(published).unwrap_or_default();

    let recording = http("GET", "/moto-api/recorder/download-recording");
    let amz = |t: SystemTime| {
        humantime::format_rfc3339_seconds(t)
            .to_string()
            .replace(['-', ':'], "")
    };
    let (from, to) = (
        amz(published - Duration::from_secs(1)),
        amz(last + Duration::from_secs(1)),
    );
    let mut calls = 0usize;
    let mut all_waiting_calls = 0usize;
    for line in recording.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["headers"]["X-Amz-Target"] != "AmazonSSM.GetParameter" {
            continue;
        }
        all_waiting_calls += 1;
        let date = v["headers"]["X-Amz-Date"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if date.as_str() >= from.as_str() && date.as_str() <= to.as_str() {
            calls += 1;
        }
    }
    let window = spread.as_secs_f64().max(1.0) + 2.0;

    // Critical-path overhead: material is there; from process start to kubeadm join launch.
    let mut overheads = Vec::new();
    let ids = identities(&c.sdk, "demo-worker-general").await;
    for i in 0..10 {
        let node = f.node(
            &format!("late{i}"),
            ids[i % ids.len()].clone(),
            &node_yaml(false, production),
        );
        let start = SystemTime::now();
        let t0 = Instant::now();
        let mut child = f.spawn(&node, "bootstrap");
        assert!(
            wait_child(&mut child, Duration::from_secs(60))
                .unwrap()
                .success(),
            "{}",
            f.log(&node, "bootstrap")
        );
        let launched = log_time_of(&f.log(&node, "bootstrap"), "join --config").unwrap();
        overheads.push(launched.duration_since(start).unwrap_or(t0.elapsed()));
    }
    overheads.sort();
    println!("| fleet ({n} waiting workers, moto on loopback, debug build) | value |");
    println!("|---|---|");
    println!(
        "| publication of P/join/worker → last `kubeadm join` start | {:.1} s |",
        spread.as_secs_f64()
    );
    println!(
        "| SSM GetParameter calls in that window | {calls} ({:.1}/s) |",
        calls as f64 / window
    );
    println!(
        "| SSM GetParameter calls while {n} nodes waited 45 s before publication | {} ({:.1}/s) |",
        all_waiting_calls - calls,
        (all_waiting_calls - calls) as f64 / 45.0
    );
    println!("| agent overhead, process start → `kubeadm join` launch (10 runs) | median {} ms, max {} ms |", overheads[5].as_millis(), overheads[9].as_millis());
}
