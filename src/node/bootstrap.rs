//! `haimg node bootstrap`: elect, init or join.
//!
//! # Flow
//! Master:
//! 1. If `P/join/control-plane` holds material with enough life left, wait until the last
//!    membership check (by `reconcile` on a live master) is newer than this boot and shows
//!    no dead etcd member, then `kubeadm join --control-plane`.
//! 2. Else take the init lock (`P/init/lock-<epoch>`, create-only). The winner generates a
//!    token and a certificate key, runs `kubeadm init --upload-certs` (both in the 0600
//!    config file), applies the image's CNI manifest, computes the CA hash and publishes
//!    `P/join/control-plane` create-only, then `P/join/worker`, then `P/state` = ready.
//! 3. Else (someone holds a live lock, or material exists but is too close to expiry) wait
//!    with jittered backoff and go to 1.
//!
//! Worker: wait for usable `P/join/worker`, then `kubeadm join`.
//!
//! # Guarantees
//! - At most one cluster is ever published: even if a lease expires while its holder is
//!   merely slow, the first create of `P/join/control-plane` wins; a loser resets and joins.
//! - Secrets exist on disk only in 0600 files while kubeadm runs, and are never logged.
//! - A replacement master never joins while a dead member is still in etcd.
//! - Every wait is bounded (`agent.joinTimeoutSeconds`); re-running on a joined node is a no-op.
//!
//! # Caveats
//! - A holder that dies after `kubeadm init` but before publishing leaves an orphan
//!   control plane on its (dying) instance; the next holder starts a fresh cluster.
//! - The NLB's DNS name is looked up by name, so the load balancer must exist first.

use std::time::{Duration, SystemTime};

use super::agent::{paths, write_secret_file, Agent, SecretFile};
use super::kubeadm;
use super::store::{Acquired, Created, Election, Held};
use crate::backoff::Backoff;
use crate::contract::join::{EtcdHealth, JoinMaterial, MemberRecord, Phase, PublishedTimes, State};
use crate::contract::layout;
use crate::contract::node_config::{NodeEndpoint, Role, StaticJoin, STATIC_TOKEN_TTL};
use crate::contract::{pki, secret};
use crate::error::{Error, Result};

pub async fn run(agent: &Agent) -> Result<()> {
    if agent.has_joined() {
        tracing::info!("already part of the cluster (kubelet.conf exists): nothing to do");
        return Ok(());
    }
    // A node that fails its preflight is not replaced: its replacement would come from the
    // same image and fail the same way. The error says what to fix.
    super::preflight::run(
        &agent.seams,
        Duration::from_secs(agent.cfg.agent.cri_wait_seconds),
    )
    .await?;
    let result = elect_and_join(agent).await;
    if let Err(e) = &result {
        give_up(agent, e).await;
    }
    result
}

/// After the last attempt: a node that never joins would sit in its group for ever (worker
/// groups use EC2 health checks, which a running instance passes). Mark it Unhealthy so the
/// group replaces it.
async fn give_up(agent: &Agent, why: &Error) {
    let Some(asg) = &agent.cfg.autoscaling else {
        tracing::error!(error = %why, "bootstrap failed; not in an Auto Scaling group, so nothing replaces this node");
        return;
    };
    tracing::error!(error = %why, group = %asg.group_name, "bootstrap failed: marking this instance Unhealthy so its group replaces it");
    let client = aws_sdk_autoscaling::Client::new(&agent.aws);
    if let Err(e) = crate::aws::autoscaling::mark_unhealthy(&client, &agent.id.instance_id).await {
        tracing::error!(error = %e, "SetInstanceHealth failed: the instance stays in service unjoined");
    }
}

async fn elect_and_join(agent: &Agent) -> Result<()> {
    let boot = super::clock::now();
    let s = &agent.cfg.agent;
    let mut backoff = Backoff::new(
        Duration::from_millis(s.poll_initial_millis),
        Duration::from_millis(s.poll_max_millis),
        Duration::from_secs(s.join_timeout_seconds),
    );
    if let Some(st) = &agent.cfg.credentials {
        return run_static(agent, st, backoff).await;
    }
    let margin = Duration::from_secs(s.min_remaining_seconds);
    let mut failures = 0;
    loop {
        let step = match agent.cfg.role {
            Role::Master => master_step(agent, margin, boot).await,
            Role::Worker => worker_step(agent, margin).await,
        };
        let step = match step {
            Ok(step) => step,
            // kubeadm failed (the node was reset): try again with fresh material, a bounded
            // number of times. Anything else (SSM, IMDS, a bad file) is not retried here.
            Err(e @ Error::Kubeadm(_)) => {
                failures += 1;
                if failures >= s.kubeadm_attempts {
                    return Err(Error::Runtime(format!(
                        "bootstrap: kubeadm failed {failures} time(s); the last error: {e}"
                    )));
                }
                tracing::warn!(error = %e, attempt = failures, of = s.kubeadm_attempts, "kubeadm failed; the node was reset, trying again");
                Step::Wait(format!("retrying after kubeadm failure {failures}"))
            }
            Err(e) => return Err(e),
        };
        match step {
            Step::Done => return Ok(()),
            Step::Again(why) => tracing::info!(reason = %why, "trying again at once"),
            Step::Wait(why) => {
                tracing::info!(reason = %why, "waiting");
                if !backoff.wait().await {
                    return Err(Error::Timeout(format!(
                        "bootstrap: still waiting after {}s: {why}",
                        s.join_timeout_seconds
                    )));
                }
            }
        }
    }
}

/// Static credentials (`spec.credentials.source: static`, no Parameter Store): the first
/// master runs `kubeadm init` with the pre-generated token, certificate key and CA; every
/// other node retries `kubeadm join` with them until the API answers (bounded by
/// `agent.joinTimeoutSeconds`). No election is needed: the spec names the first master.
async fn run_static(agent: &Agent, st: &StaticJoin, mut backoff: Backoff) -> Result<()> {
    let endpoint = resolve_endpoint(agent).await?;
    if st.init {
        let key = st.certificate_key.clone().ok_or_else(|| {
            Error::Runtime("static credentials: the init node has no certificate key".into())
        })?;
        for p in [paths::CA_CERT, paths::CA_KEY] {
            let path = agent.path(p);
            if !path.exists() {
                return Err(Error::Runtime(format!("static credentials: {} is missing: the first master's user-data places the cluster CA there", path.display())));
            }
        }
        // A failed init is reset (the pre-placed CA kept, see `reset`) and tried again:
        // the others keep retrying their joins meanwhile.
        let attempts = agent.cfg.agent.kubeadm_attempts;
        for attempt in 1.. {
            let done = async {
                kubeadm_init(agent, &endpoint, &st.token, STATIC_TOKEN_TTL, &key).await?;
                apply_cni(agent)
                    .await
                    .map_err(|e| Error::Kubeadm(e.to_string()))
            }
            .await;
            match done {
                Ok(()) => break,
                Err(e @ Error::Kubeadm(_)) if attempt < attempts => {
                    tracing::warn!(error = %e, attempt, of = attempts, "static init failed; the node was reset, trying again");
                    if !backoff.wait().await {
                        return Err(Error::Timeout(format!(
                            "bootstrap: static init still failing after {}s; the last error: {e}",
                            agent.cfg.agent.join_timeout_seconds
                        )));
                    }
                }
                Err(e) => {
                    reset(agent).await;
                    return Err(e);
                }
            }
        }
        tracing::info!(endpoint = %endpoint, "cluster initialized with static credentials");
        return Ok(());
    }
    let now = super::clock::now();
    let m = JoinMaterial {
        endpoint,
        token: st.token.clone(),
        ca_cert_hashes: st.ca_cert_hashes.clone(),
        certificate_key: st.certificate_key.clone(),
        kubernetes_version: agent.cfg.kubernetes.version.to_string(),
        issued_at: now,
        expires_at: now,
        generation: 0,
    };
    loop {
        match join(agent, &m, st.certificate_key.as_ref()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "join with static credentials failed (is the first master up yet?)");
                if !backoff.wait().await {
                    return Err(Error::Timeout(format!(
                        "bootstrap: no successful join with static credentials after {}s; the last error: {e}",
                        agent.cfg.agent.join_timeout_seconds
                    )));
                }
            }
        }
    }
}

enum Step {
    Done,
    Wait(String),
    /// Something changed that makes another attempt worth making now (new join material).
    Again(String),
}

async fn worker_step(agent: &Agent, margin: Duration) -> Result<Step> {
    match agent.store.get::<JoinMaterial>(layout::JOIN_WORKER).await? {
        Some(m) if m.usable(super::clock::now(), margin) => {
            join(agent, &m, None).await?;
            Ok(Step::Done)
        }
        Some(_) => Ok(Step::Wait(
            "worker join material is too close to expiry; waiting for its rotation".into(),
        )),
        None => Ok(Step::Wait("no worker join material yet".into())),
    }
}

async fn master_step(agent: &Agent, margin: Duration, boot: SystemTime) -> Result<Step> {
    let now = super::clock::now();
    if let Some(m) = agent
        .store
        .get::<JoinMaterial>(layout::JOIN_CONTROL_PLANE)
        .await?
    {
        if !m.usable(now, margin) {
            return Ok(Step::Wait(
                "control-plane join material is too close to expiry; waiting for its rotation"
                    .into(),
            ));
        }
        if let Some(why) = membership_blocks_join(agent, boot).await? {
            return Ok(Step::Wait(why));
        }
        let key = m
            .certificate_key
            .clone()
            .ok_or_else(|| Error::Runtime("P/join/control-plane has no certificate key".into()))?;
        record_member(agent).await?;
        return match join(agent, &m, Some(&key)).await {
            Ok(()) => Ok(Step::Done),
            Err(e @ Error::Kubeadm(_)) => rotated_during_join(agent, &m, e).await,
            Err(e) => Err(e),
        };
    }
    if let Some(state) = agent.store.get::<State>(layout::STATE).await? {
        if state.phase == Phase::Ready {
            return Ok(Step::Wait("the cluster is ready but publishes no control-plane join material; waiting for `haimg node refresh`".into()));
        }
    }
    let lease = Duration::from_secs(agent.cfg.agent.init_lease_seconds);
    let election = Election {
        store: &agent.store,
        dir: layout::INIT_LOCKS.into(),
        lease,
    };
    match election.try_acquire(&agent.id.instance_id, now).await? {
        Acquired::Held { by, epoch } => Ok(Step::Wait(format!(
            "init lock epoch {epoch} is held by {by}"
        ))),
        Acquired::Won(epoch) => {
            tracing::info!(epoch, "won the init lock: initializing the cluster");
            let held = election.hold(&agent.id.instance_id, epoch);
            let result = init(agent, &held).await;
            match &result {
                Ok(Step::Done) => {}
                // A holder that failed, or lost the race to publish, gives the lock back at
                // once: the next master need not wait out the lease.
                _ => held.release().await,
            }
            result
        }
    }
}

/// A control-plane join failed. If `P/join/control-plane` has been rotated since it was
/// read, the failure is the rotation's (`upload-certs` re-encrypted the certificates under
/// a new key, so the old one no longer decrypts them): try again at once with the new
/// material, without counting it as a kubeadm failure.
async fn rotated_during_join(agent: &Agent, used: &JoinMaterial, e: Error) -> Result<Step> {
    let now = agent
        .store
        .get::<JoinMaterial>(layout::JOIN_CONTROL_PLANE)
        .await?;
    match now {
        Some(n) if n.generation != used.generation => Ok(Step::Again(format!(
            "the join material was rotated (generation {} to {}) while this master joined with the old one",
            used.generation, n.generation
        ))),
        _ => Err(e),
    }
}

/// `P/members/<instance-id>`, written by a master of an Auto Scaling group before it
/// becomes an etcd member: how reconcile tells this node's member from a dead predecessor
/// that had the same address.
async fn record_member(agent: &Agent) -> Result<()> {
    if agent.cfg.autoscaling.is_none() {
        return Ok(());
    }
    let record = MemberRecord {
        instance_id: agent.id.instance_id.clone(),
        private_ip: agent.id.private_ip.clone(),
        started_at: super::clock::now(),
    };
    agent
        .store
        .put(&layout::member(&agent.id.instance_id), &record, false, true)
        .await?;
    Ok(())
}

/// Whether a joining master must still wait. It joins only on a membership check newer
/// than its own boot that shows no dead member: a 3-member etcd with one dead member
/// refuses a fourth ("not enough started members", kubeadm#1846). The init master
/// publishes the first check (one member, none dead), so masters booted with it join at
/// once; a replacement booted later waits for `reconcile` on a live master. A check that
/// never comes is waited for at most `agent.membershipWaitSeconds`.
async fn membership_blocks_join(agent: &Agent, boot: SystemTime) -> Result<Option<String>> {
    let health = agent
        .store
        .get::<State>(layout::STATE)
        .await?
        .and_then(|s| s.etcd);
    if let Some(h) = &health {
        if !h.dead.is_empty() {
            return Ok(Some(format!("etcd still lists dead member(s) {:?}; waiting for `haimg node reconcile` to remove them", h.dead)));
        }
    }
    let fresh = health.as_ref().is_some_and(|h| h.checked_at >= boot);
    if !fresh {
        let waited = super::clock::now().duration_since(boot).unwrap_or_default();
        let bound = Duration::from_secs(agent.cfg.agent.membership_wait_seconds);
        if waited < bound {
            return Ok(Some(
                "waiting for an etcd membership check newer than this boot".into(),
            ));
        }
        tracing::warn!(
            "no etcd membership check since this boot after {}s: joining anyway",
            bound.as_secs()
        );
    }
    Ok(None)
}

pub async fn resolve_endpoint(agent: &Agent) -> Result<String> {
    match &agent.cfg.endpoint {
        NodeEndpoint::Nlb {
            load_balancer_name,
            port,
        } => {
            let elb = aws_sdk_elasticloadbalancingv2::Client::new(&agent.aws);
            let dns = crate::aws::elb::dns_name(&elb, load_balancer_name).await?;
            Ok(format!("{dns}:{port}"))
        }
        NodeEndpoint::Vip { address, port, .. } => Ok(match address {
            std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
            a => format!("{a}:{port}"),
        }),
    }
}

async fn init(agent: &Agent, held: &Held) -> Result<Step> {
    let endpoint = resolve_endpoint(agent).await?;
    let now = super::clock::now();
    let state = State {
        phase: Phase::Initializing,
        initialized_by: agent.id.instance_id.clone(),
        initialized_at: now,
        etcd: None,
    };
    // Create-only: a holder that took over never overwrites what its predecessor wrote,
    // and only the master whose publication wins writes `P/state` again (ready).
    agent.store.put(layout::STATE, &state, false, false).await?;
    record_member(agent).await?;

    let token = secret::bootstrap_token();
    let key = secret::certificate_key();
    let ttl = Duration::from_secs(agent.cfg.agent.token_ttl_seconds);
    kubeadm_init(agent, &endpoint, &token, ttl, &key).await?;
    // Between a successful init and publication this node holds a control plane nobody can
    // join: any failure here resets it, so the next attempt (or holder) starts clean.
    let published = async {
        apply_cni(agent).await?;
        // Frozen past the lease (a paused VM): a successor holds it and may be initializing.
        held.check().await?;
        let material = material(agent, &endpoint, token, key, 1)?;
        let created = agent
            .store
            .put(layout::JOIN_CONTROL_PLANE, &material, true, false)
            .await?;
        Ok::<_, Error>((material, created))
    }
    .await;
    let (material, created) = match published {
        Ok(p) => p,
        Err(Error::LeaseLost(why)) => {
            tracing::warn!(reason = %why, "the init lease was taken over while this master initialized: resetting and joining the new holder's cluster");
            reset(agent).await;
            return Ok(Step::Wait(
                "joining the cluster of the master that took over the init lease".into(),
            ));
        }
        Err(e) => {
            reset(agent).await;
            return Err(Error::Kubeadm(format!(
                "after kubeadm init, before the join material was published: {e}"
            )));
        }
    };
    match created {
        Created::Yes => {}
        Created::AlreadyExists => {
            // A takeover raced a slow holder and the other published first: theirs is the
            // cluster. Undo ours and join theirs.
            tracing::warn!(
                "another master published join material first: resetting and joining its cluster"
            );
            reset(agent).await;
            return Ok(Step::Wait(
                "joining the cluster published by another master".into(),
            ));
        }
    }
    publish_worker(agent, &material).await?;
    // Right after init etcd has one member, this one, and nothing dead: the first
    // membership check, so masters booted together with this one join without waiting.
    let health = EtcdHealth {
        members: 1,
        dead: vec![],
        checked_at: super::clock::now(),
        checked_by: agent.id.instance_id.clone(),
    };
    let ready = State {
        phase: Phase::Ready,
        etcd: Some(health),
        ..state
    };
    agent.store.put(layout::STATE, &ready, false, true).await?;
    tracing::info!(endpoint = %endpoint, "cluster initialized; join material published");
    Ok(Step::Done)
}

/// `kubeadm init --upload-certs` with this token and certificate key in a 0600 config file
/// (removed afterwards); a failed init is reset so the next attempt starts clean.
async fn kubeadm_init(
    agent: &Agent,
    endpoint: &str,
    token: &secret::Secret,
    token_ttl: Duration,
    key: &secret::Secret,
) -> Result<()> {
    let s = &agent.cfg.agent;
    let config_path = agent.path(paths::INIT_CONFIG);
    let _cleanup = SecretFile(config_path.clone());
    write_secret_file(
        &config_path,
        &kubeadm::init_config(
            &agent.cfg,
            &agent.id,
            endpoint,
            Some(token),
            token_ttl,
            key,
            baked_etcd_tag(agent).as_deref(),
        ),
    )?;
    let cfg = config_path.to_string_lossy();
    let mut args = vec!["init", "--config", &cfg, "--upload-certs"];
    args.extend(static_pods_flag(agent));
    if let Err(e) = agent
        .kubeadm(&args, Duration::from_secs(s.kubeadm_timeout_seconds))
        .await
    {
        reset(agent).await;
        return Err(Error::Kubeadm(e.to_string()));
    }
    Ok(())
}

/// kubeadm installs no CNI (seed 002 §6.4): apply the image's manifest.
async fn apply_cni(agent: &Agent) -> Result<()> {
    let manifest = agent.path(paths::CNI_MANIFEST);
    agent
        .kubectl(
            &["apply", "-f", &manifest.to_string_lossy()],
            Duration::from_secs(300),
        )
        .await
        .map_err(|e| Error::Runtime(format!("applying the CNI manifest: {e}")))?;
    Ok(())
}

/// Builds fresh join material from a token and key that kubeadm has just accepted.
pub fn material(
    agent: &Agent,
    endpoint: &str,
    token: secret::Secret,
    key: secret::Secret,
    generation: u64,
) -> Result<JoinMaterial> {
    let s = &agent.cfg.agent;
    let ca_path = agent.path(paths::CA_CERT);
    let ca = std::fs::read_to_string(&ca_path).map_err(Error::io(&ca_path))?;
    let hash = pki::ca_cert_hash(&ca)
        .map_err(|e| Error::Runtime(format!("{}: {e}", ca_path.display())))?;
    let now = super::clock::now();
    let lifetime = Duration::from_secs(s.certificate_key_ttl_seconds.min(s.token_ttl_seconds));
    Ok(JoinMaterial {
        endpoint: endpoint.to_string(),
        token,
        ca_cert_hashes: vec![hash],
        certificate_key: Some(key),
        kubernetes_version: agent.cfg.kubernetes.version.to_string(),
        issued_at: now,
        expires_at: now + lifetime,
        generation,
    })
}

/// After `P/join/control-plane`: the worker's copy (no certificate key; the token's own
/// lifetime), then `P/join/times` for `haimg status`.
pub async fn publish_worker(agent: &Agent, m: &JoinMaterial) -> Result<()> {
    let worker =
        m.for_workers(m.issued_at + Duration::from_secs(agent.cfg.agent.token_ttl_seconds));
    agent
        .store
        .put(layout::JOIN_WORKER, &worker, true, true)
        .await?;
    let times = PublishedTimes {
        generation: m.generation,
        issued_at: m.issued_at,
        control_plane_expires_at: m.expires_at,
        worker_expires_at: worker.expires_at,
    };
    agent
        .store
        .put(layout::JOIN_TIMES, &times, false, true)
        .await?;
    Ok(())
}

async fn join(agent: &Agent, m: &JoinMaterial, key: Option<&secret::Secret>) -> Result<()> {
    let path = agent.path(paths::JOIN_CONFIG);
    let _cleanup = SecretFile(path.clone());
    write_secret_file(
        &path,
        &kubeadm::join_config(
            &agent.cfg,
            &agent.id,
            &m.endpoint,
            &m.token,
            &m.ca_cert_hashes,
            key,
        ),
    )?;
    let role = if key.is_some() {
        "control-plane node"
    } else {
        "worker"
    };
    tracing::info!(endpoint = %m.endpoint, generation = m.generation, "joining as {role}");
    let cfg = path.to_string_lossy();
    let timeout = Duration::from_secs(agent.cfg.agent.kubeadm_timeout_seconds);
    let mut args = vec!["join", "--config", &cfg];
    if key.is_some() {
        args.extend(static_pods_flag(agent));
    }
    if let Err(e) = agent.kubeadm(&args, timeout).await {
        reset(agent).await;
        return Err(Error::Kubeadm(e.to_string()));
    }
    tracing::info!("joined");
    Ok(())
}

/// VIP-mode masters carry keepalived and haproxy static pods in /etc/kubernetes/manifests
/// before kubeadm runs (the VIP must be up when kubeadm first uses it): tell kubeadm's
/// preflight that this one non-empty directory is expected.
fn static_pods_flag(agent: &Agent) -> Option<&'static str> {
    matches!(
        agent.cfg.endpoint,
        NodeEndpoint::Vip {
            static_pods: true,
            ..
        }
    )
    .then_some("--ignore-preflight-errors=DirAvailable--etc-kubernetes-manifests")
}

/// Best-effort `kubeadm reset -f`, so the next attempt (or the next holder) starts clean.
/// kubeadm empties /etc/kubernetes/manifests; VIP-mode masters get their keepalived and
/// haproxy static pods (written by cloud-init, not by kubeadm) back, or a retried join
/// would run without them.
async fn reset(agent: &Agent) {
    let mut keep: Vec<(std::path::PathBuf, Vec<u8>, std::fs::Permissions)> =
        if static_pods_flag(agent).is_some() {
            let dir = agent.path(paths::MANIFESTS);
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| read_kept(&e.path()))
                .filter(|(p, _, _)| {
                    p.file_name()
                        .is_some_and(|n| n == "keepalived.yaml" || n == "haproxy.yaml")
                })
                .collect()
        } else {
            vec![]
        };
    // The first master of static credentials was given the cluster CA by its user-data:
    // every node pins its hash, so a retried init must use the same CA, not a new one.
    if agent.cfg.credentials.as_ref().is_some_and(|c| c.init) {
        keep.extend(
            [paths::CA_CERT, paths::CA_KEY]
                .into_iter()
                .map(|p| agent.path(p))
                .filter_map(|p| read_kept(&p)),
        );
    }
    if let Err(e) = agent
        .kubeadm(&["reset", "--force"], Duration::from_secs(300))
        .await
    {
        tracing::warn!(error = %e, "kubeadm reset failed");
    }
    for (path, data, mode) in keep {
        let restored = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, data));
        // Modes as they were (the CA key stays 0600).
        let restored = restored.and_then(|()| std::fs::set_permissions(&path, mode));
        if let Err(e) = restored {
            tracing::warn!(error = %e, path = %path.display(), "could not restore a file kubeadm reset removed");
        }
    }
}

fn read_kept(p: &std::path::Path) -> Option<(std::path::PathBuf, Vec<u8>, std::fs::Permissions)> {
    let meta = std::fs::metadata(p).ok()?;
    Some((p.to_path_buf(), std::fs::read(p).ok()?, meta.permissions()))
}

/// The etcd image tag the image carries, if its manifest names one (see
/// [`kubeadm::baked_etcd_tag`]); no manifest (a node not made by `haimg bake`) is none.
pub fn baked_etcd_tag(agent: &Agent) -> Option<String> {
    let path = agent.path(paths::IMAGE_MANIFEST);
    let text = std::fs::read_to_string(&path).ok()?;
    let tag = kubeadm::baked_etcd_tag(&text);
    if tag.is_none() {
        tracing::warn!(manifest = %path.display(), "the image manifest names no single etcd image: kubeadm uses its default");
    }
    tag
}
