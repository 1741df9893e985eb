//! `haimg node refresh` (systemd timer on masters): keep valid join material in SSM.
//!
//! # Flow
//! 1. Not an initialized control-plane node (no admin.conf): nothing to do.
//! 2. If `P/join/control-plane` exists and is younger than half its lifetime: nothing to do.
//! 3. Take the rotation lock for the next generation (`P/rotation/<gen>/lock-<epoch>`,
//!    create-only): only its winner rotates, so one rotation happens per period even when
//!    every master's timer fires at once.
//! 4. `kubeadm token create --ttl …` (kubeadm generates the token and prints it: it never
//!    appears in a command line), then `kubeadm init phase upload-certs --upload-certs
//!    --config F` with a fresh certificate key in the 0600 file F.
//! 5. Publish `P/join/control-plane`, then `P/join/worker`, each one JSON document.
//!
//! # Guarantees
//! - A reader never sees a token from one rotation with a key from another: each
//!   parameter is one document, written whole.
//! - Material is rotated at half-life, so with the timer running every 10 minutes valid
//!   material is always present; expired material is replaced on the next run.
//!
//! # Caveats
//! - Old tokens are left to expire on their own TTL.

use std::time::{Duration, SystemTime};

use super::agent::{paths, write_secret_file, Agent, SecretFile};
use super::bootstrap::{material, publish_worker, resolve_endpoint};
use super::join::JoinMaterial;
use super::kubeadm;
use super::secret::{self, Secret};
use super::store::{Acquired, Election};
use crate::error::{Error, Result};

/// How long a rotation lock holder has to publish before another master may rotate.
const ROTATION_LEASE: Duration = Duration::from_secs(300);

pub async fn run(agent: &Agent) -> Result<()> {
    if !agent.is_control_plane_ready() {
        tracing::info!("not an initialized control-plane node: nothing to refresh");
        return Ok(());
    }
    let now = SystemTime::now();
    let current = agent
        .store
        .get::<JoinMaterial>("join/control-plane")
        .await?;
    if let Some(m) = &current {
        if !m.past_half_life(now) {
            tracing::info!(generation = m.generation, "join material is fresh");
            return Ok(());
        }
    }
    let generation = current.as_ref().map(|m| m.generation + 1).unwrap_or(1);
    let election = Election {
        store: &agent.store,
        dir: format!("rotation/{generation}"),
        lease: ROTATION_LEASE,
    };
    if let Acquired::Held { by, .. } = election.try_acquire(&agent.id.instance_id, now).await? {
        tracing::info!(generation, holder = %by, "another master is rotating");
        return Ok(());
    }
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

    let endpoint = match &current {
        Some(m) => m.endpoint.clone(),
        None => resolve_endpoint(agent).await?,
    };
    let key = secret::certificate_key();
    let path = agent.path(paths::UPLOAD_CERTS_CONFIG);
    {
        let _cleanup = SecretFile(path.clone());
        write_secret_file(
            &path,
            &kubeadm::init_config(&agent.cfg, &agent.id, &endpoint, None, Duration::ZERO, &key),
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
    agent
        .store
        .put("join/control-plane", &m, true, true)
        .await?;
    publish_worker(agent, &m).await?;
    tracing::info!(generation, "join material rotated");
    Ok(())
}
