//! `haimg node refresh` (systemd timer on masters): keep valid join material in SSM.
//!
//! # Flow
//! 1. Not an initialized control-plane node (no admin.conf), or no material published
//!    while the cluster is not Ready (its init is still running): nothing to do.
//! 2. If `P/join/control-plane` is younger than half its lifetime and no rotation of the
//!    next generation was started: nothing to do.
//! 3. Take the rotation lock for the next generation (`P/rotation/<gen>/lock-<epoch>`,
//!    create-only), renewed while the rotation runs: only its holder rotates, so one
//!    rotation happens per generation even when every master's timer fires at once.
//! 4. `kubeadm token create --ttl …` (kubeadm generates the token and prints it: it never
//!    appears in a command line), then `kubeadm init phase upload-certs --upload-certs
//!    --config F` with a fresh certificate key in the 0600 file F.
//! 5. Still the lease holder, and no newer generation published: publish
//!    `P/join/control-plane`, then `P/join/worker` and `P/join/times`.
//!
//! # Guarantees
//! - A reader never sees a token from one rotation with a key from another: each
//!   parameter is one document, written whole.
//! - Upload and publication are one step: `upload-certs` kills the published key at once,
//!   so a rotation that uploaded but did not publish (SSM failed, the node died) leaves its
//!   lock behind, and the next run on any master rotates again instead of waiting for the
//!   half-life. A joining master whose key died mid-join re-reads the material.
//! - A publish never overwrites a newer generation, and a holder frozen past its lease
//!   publishes nothing.
//! - Material is rotated at half-life, so with the timer running every 10 minutes valid
//!   material is always present; expired material is replaced on the next run.
//!
//! # Caveats
//! - Old tokens are left to expire on their own TTL.
//! - A holder frozen *during* `upload-certs` past its lease can upload after its successor
//!   did; its own publish is refused, and the successor's key is dead until the next
//!   rotation. Joining masters then fail their attempts and the group replaces them.

use std::time::Duration;

use super::agent::{paths, write_secret_file, Agent, SecretFile};
use super::bootstrap::{material, publish_worker, resolve_endpoint};
use super::kubeadm;
use super::store::{Acquired, Election, Held};
use crate::contract::join::JoinMaterial;
use crate::contract::layout;
use crate::contract::secret::{self, Secret};
use crate::error::{Error, Result};

pub async fn run(agent: &Agent) -> Result<()> {
    if !agent.is_control_plane_ready() {
        tracing::info!("not an initialized control-plane node: nothing to refresh");
        return Ok(());
    }
    let now = super::clock::now();
    let current = agent
        .store
        .get::<JoinMaterial>(layout::JOIN_CONTROL_PLANE)
        .await?;
    if current.is_none() {
        // admin.conf is written early in `kubeadm init` (its kubeconfig phase), long before
        // the init holder publishes generation 1: material published here would be taken
        // for another master's and make the holder reset the cluster it just made (seen
        // when the timer first fired mid-init on a node that booted slowly). Publishing a
        // first generation is for a cluster that is Ready and lost its material only.
        let ready = agent
            .store
            .get::<crate::contract::join::State>(layout::STATE)
            .await?
            .is_some_and(|s| s.phase == crate::contract::join::Phase::Ready);
        if !ready {
            tracing::info!(
                "the cluster is not initialized yet (P/state is not Ready): nothing to refresh"
            );
            return Ok(());
        }
    }
    let generation = current.as_ref().map(|m| m.generation + 1).unwrap_or(1);
    let election = Election {
        store: &agent.store,
        dir: layout::rotation_locks(generation),
        lease: Duration::from_secs(agent.cfg.agent.rotation_lease_seconds),
    };
    if let Some(m) = &current {
        // A lock for the next generation means a rotation started and did not publish: the
        // key it uploaded (if it got that far) is the live one, and the published key dead.
        let unfinished = election.latest().await?.is_some();
        if !m.past_half_life(now) && !unfinished {
            tracing::info!(generation = m.generation, "join material is fresh");
            return Ok(());
        }
        if unfinished {
            tracing::warn!(
                generation,
                "a rotation of this generation started and did not publish"
            );
        }
    }
    let epoch = match election.try_acquire(&agent.id.instance_id, now).await? {
        Acquired::Held { by, .. } => {
            tracing::info!(generation, holder = %by, "another master is rotating");
            return Ok(());
        }
        Acquired::Won(epoch) => epoch,
    };
    let held = election.hold(&agent.id.instance_id, epoch);
    match rotate(agent, &held, current.as_ref(), generation).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // The next run, here or on another master, rotates again at once.
            held.release().await;
            Err(e)
        }
    }
}

async fn rotate(
    agent: &Agent,
    held: &Held,
    current: Option<&JoinMaterial>,
    generation: u64,
) -> Result<()> {
    let s = &agent.cfg.agent;
    let admin = agent.path(paths::ADMIN_CONF);
    let admin = admin.to_string_lossy();
    let ttl = format!("{}s", s.token_ttl_seconds);
    let out = agent
        .kubeadm(
            &["token", "create", "--ttl", &ttl, "--kubeconfig", &admin],
            Duration::from_secs(120),
        )
        .await?;
    let token = out
        .lines()
        .map(str::trim)
        .find(|l| secret::is_bootstrap_token(l))
        .map(Secret::new);
    let token =
        token.ok_or_else(|| Error::Runtime("`kubeadm token create` printed no token".into()))?;

    let endpoint = match current {
        Some(m) => m.endpoint.clone(),
        None => resolve_endpoint(agent).await?,
    };
    let key = secret::certificate_key();
    let path = agent.path(paths::UPLOAD_CERTS_CONFIG);
    {
        let _cleanup = SecretFile(path.clone());
        write_secret_file(
            &path,
            &kubeadm::init_config(
                &agent.cfg,
                &agent.id,
                &endpoint,
                None,
                Duration::ZERO,
                &key,
                super::bootstrap::baked_etcd_tag(agent).as_deref(),
            ),
        )?;
        let cfg = path.to_string_lossy();
        agent
            .kubeadm(
                &[
                    "init",
                    "phase",
                    "upload-certs",
                    "--upload-certs",
                    "--config",
                    &cfg,
                    "--kubeconfig",
                    &admin,
                ],
                Duration::from_secs(300),
            )
            .await?;
    }
    let m = material(agent, &endpoint, token, key, generation)?;
    // From here the uploaded key is the live one: publish it now, unless this holder was
    // taken over or something newer is already there.
    held.check().await?;
    if let Some(newer) = agent
        .store
        .get::<JoinMaterial>(layout::JOIN_CONTROL_PLANE)
        .await?
        .filter(|p| p.generation >= generation)
    {
        tracing::warn!(
            generation,
            published = newer.generation,
            "a newer generation is already published: not overwriting it"
        );
        return Ok(());
    }
    agent
        .store
        .put(layout::JOIN_CONTROL_PLANE, &m, true, true)
        .await?;
    publish_worker(agent, &m).await?;
    tracing::info!(generation, "join material rotated");
    Ok(())
}
