//! The agent's view of SSM Parameter Store under the cluster prefix `P` (DESIGN §6).
//!
//! Every call names the parameter in its error, never its value.

use std::time::{Duration, SystemTime};

use aws_sdk_ssm::types::ParameterType;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::contract::join::Lock;
use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Store {
    client: aws_sdk_ssm::Client,
    prefix: String,
    kms_key_id: String,
}

/// Outcome of a create-only write.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Yes,
    AlreadyExists,
}

impl Store {
    pub fn new(client: aws_sdk_ssm::Client, prefix: &str, kms_key_id: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_string(),
            kms_key_id: kms_key_id.to_string(),
        }
    }

    pub fn name(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// Reads and parses a parameter (decrypting SecureStrings); `None` if it does not exist.
    pub async fn get<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>> {
        self.read(rel, true).await
    }

    /// Reads a String parameter without asking for decryption: no KMS right involved.
    pub async fn get_plain<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>> {
        self.read(rel, false).await
    }

    async fn read<T: DeserializeOwned>(&self, rel: &str, decrypt: bool) -> Result<Option<T>> {
        let name = self.name(rel);
        let out = match self
            .client
            .get_parameter()
            .name(&name)
            .with_decryption(decrypt)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::aws(format!("ssm GetParameter {name}"))(e)),
        };
        let value = out.parameter().and_then(|p| p.value()).unwrap_or_default();
        serde_json::from_str(value).map(Some).map_err(|e| {
            Error::Runtime(format!(
                "ssm parameter {name} does not hold what haimg wrote: {e}"
            ))
        })
    }

    /// Writes a JSON document. `secure` makes it a KMS SecureString; `overwrite=false`
    /// makes the write create-only, SSM's one atomic operation.
    pub async fn put<T: Serialize>(
        &self,
        rel: &str,
        value: &T,
        secure: bool,
        overwrite: bool,
    ) -> Result<Created> {
        let name = self.name(rel);
        let body = serde_json::to_string(value).expect("plain data serializes");
        let mut req = self
            .client
            .put_parameter()
            .name(&name)
            .value(body)
            .overwrite(overwrite);
        req = if secure {
            req.r#type(ParameterType::SecureString)
                .key_id(&self.kms_key_id)
        } else {
            req.r#type(ParameterType::String)
        };
        match req.send().await {
            Ok(_) => Ok(Created::Yes),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_already_exists()) =>
            {
                Ok(Created::AlreadyExists)
            }
            Err(e) => Err(Error::aws(format!("ssm PutParameter {name}"))(e)),
        }
    }

    /// Deletes a parameter; one that is already gone is success.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let name = self.name(rel);
        match self.client.delete_parameter().name(&name).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::aws(format!("ssm DeleteParameter {name}"))(e)),
        }
    }

    /// Names (relative to the prefix) and values of every parameter directly under `rel`.
    pub async fn list(&self, rel: &str) -> Result<Vec<(String, String)>> {
        let path = self.name(rel);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .get_parameters_by_path()
            .path(&path)
            .recursive(false)
            .with_decryption(false)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(Error::aws(format!("ssm GetParametersByPath {path}")))?;
            for p in page.parameters() {
                if let (Some(n), Some(v)) = (p.name(), p.value()) {
                    out.push((
                        n.trim_start_matches(&format!("{}/", self.prefix))
                            .to_string(),
                        v.to_string(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// A lease-based mutual exclusion built from create-only parameter names
/// `<dir>/lock-<epoch>`: whoever creates the lowest free epoch holds the lock; a lock
/// whose lease ran out (its holder stopped renewing) or that its holder released is taken
/// over by creating the next epoch.
pub struct Election<'a> {
    pub store: &'a Store,
    pub dir: String,
    pub lease: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Acquired {
    /// We hold the lock at this epoch.
    Won(u64),
    /// Someone else holds a live lease.
    Held { by: String, epoch: u64 },
}

impl Election<'_> {
    /// The highest epoch and its lock (`None` inside when it cannot be read).
    pub async fn latest(&self) -> Result<Option<(u64, Option<Lock>)>> {
        Ok(latest_lock(&self.store.list(&self.dir).await?))
    }

    pub async fn try_acquire(&self, me: &str, now: SystemTime) -> Result<Acquired> {
        let next = match self.latest().await? {
            // Our own unreleased lock (a retry of ours, or a restart of this node).
            Some((epoch, Some(lock))) if lock.instance_id == me && !lock.released => {
                return Ok(Acquired::Won(epoch))
            }
            Some((epoch, Some(lock))) if lock.live(now, self.lease) => {
                return Ok(Acquired::Held {
                    by: lock.instance_id,
                    epoch,
                })
            }
            // Expired, released, or unreadable: never wait on garbage forever.
            Some((epoch, _)) => epoch + 1,
            None => 1,
        };
        let lock = Lock {
            instance_id: me.to_string(),
            acquired_at: now,
            renewed_at: None,
            released: false,
        };
        match self
            .store
            .put(&format!("{}/lock-{next}", self.dir), &lock, false, false)
            .await?
        {
            Created::Yes => Ok(Acquired::Won(next)),
            Created::AlreadyExists => Ok(Acquired::Held {
                by: "another node".into(),
                epoch: next,
            }),
        }
    }

    /// Holds a won epoch: renews it in the background until released or dropped.
    pub fn hold(&self, me: &str, epoch: u64) -> Held {
        Held::start(self.store.clone(), &self.dir, me, epoch, self.lease)
    }
}

fn latest_lock(locks: &[(String, String)]) -> Option<(u64, Option<Lock>)> {
    locks
        .iter()
        .filter_map(|(name, value)| {
            let epoch = name
                .rsplit('/')
                .next()?
                .strip_prefix("lock-")?
                .parse::<u64>()
                .ok()?;
            Some((epoch, serde_json::from_str::<Lock>(value).ok()))
        })
        .max_by_key(|(e, _)| *e)
}

/// A won lease. A task renews it every third of the lease, so a holder that is slow but
/// alive keeps it however long its work takes, and one that dies (or freezes) loses it
/// within one lease. Before acting on the lease (publishing what it made under it) the
/// holder calls [`Held::check`]; a holder that gives up calls [`Held::release`] so the next
/// node takes over at once instead of waiting out the lease.
///
/// Readers judge a lease by their own clocks against the holder's renewal time, so clocks
/// may disagree by up to two thirds of the lease before a live holder looks expired.
pub struct Held {
    store: Store,
    dir: String,
    me: String,
    epoch: u64,
    acquired_at: SystemTime,
    renewer: tokio::task::JoinHandle<()>,
}

impl Held {
    fn start(store: Store, dir: &str, me: &str, epoch: u64, lease: Duration) -> Held {
        let acquired_at = super::clock::now();
        let name = format!("{dir}/lock-{epoch}");
        let renewer = {
            let (store, me, name) = (store.clone(), me.to_string(), name.clone());
            tokio::spawn(async move {
                let every = (lease / 3).max(Duration::from_millis(100));
                loop {
                    tokio::time::sleep(every).await;
                    let lock = Lock {
                        instance_id: me.clone(),
                        acquired_at,
                        renewed_at: Some(super::clock::now()),
                        released: false,
                    };
                    if let Err(e) = store.put(&name, &lock, false, true).await {
                        // The next renewal tries again; a lease that runs out is found by
                        // `check` before anything is published under it.
                        tracing::warn!(error = %e, lock = %name, "could not renew the lease");
                    }
                }
            })
        };
        Held {
            store,
            dir: dir.to_string(),
            me: me.to_string(),
            epoch,
            acquired_at,
            renewer,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether this is still the lease: the highest epoch, ours and not released. A holder
    /// that was frozen past its lease (a paused VM, a stopped process) finds the takeover
    /// here.
    pub async fn check(&self) -> Result<()> {
        let latest = latest_lock(&self.store.list(&self.dir).await?);
        match latest {
            Some((epoch, Some(lock)))
                if epoch == self.epoch && lock.instance_id == self.me && !lock.released =>
            {
                Ok(())
            }
            Some((epoch, lock)) => Err(Error::LeaseLost(format!(
                "{}/lock-{} is no longer ours: epoch {epoch} is held by {}",
                self.dir,
                self.epoch,
                lock.map_or("an unreadable lock".into(), |l| l.instance_id)
            ))),
            None => Err(Error::LeaseLost(format!(
                "{}/lock-{} has disappeared",
                self.dir, self.epoch
            ))),
        }
    }

    /// Stops renewing and marks the lease released, so the next node need not wait it out.
    /// Best effort: a failure here only costs the others the rest of the lease.
    pub async fn release(self) {
        self.renewer.abort();
        let lock = Lock {
            instance_id: self.me.clone(),
            acquired_at: self.acquired_at,
            renewed_at: Some(super::clock::now()),
            released: true,
        };
        let name = format!("{}/lock-{}", self.dir, self.epoch);
        match self.store.put(&name, &lock, false, true).await {
            Ok(_) => tracing::info!(lock = %name, "released the lease"),
            Err(e) => {
                tracing::warn!(error = %e, lock = %name, "could not release the lease; it expires on its own")
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
