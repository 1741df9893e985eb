//! The agent's view of SSM Parameter Store under the cluster prefix `P` (DESIGN §6).
//!
//! Every call names the parameter in its error, never its value.

use std::time::SystemTime;

use aws_sdk_ssm::types::ParameterType;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::join::Lock;
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
        let name = self.name(rel);
        let out = match self
            .client
            .get_parameter()
            .name(&name)
            .with_decryption(true)
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

/// Whether `rel` (a name relative to `P`) is one of the parameters haimg writes (DESIGN §6):
/// `state`, `cluster` (written by `haimg up`), `join/control-plane`, `join/worker`,
/// `init/lock-<epoch>` and `rotation/<generation>/lock-<epoch>`. `haimg down` deletes these
/// and nothing else, so a prefix shared by mistake never loses a stranger's parameter.
pub fn is_layout_name(rel: &str) -> bool {
    let lock = |s: &str| {
        s.strip_prefix("lock-")
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
    };
    match rel.split('/').collect::<Vec<_>>().as_slice() {
        ["state" | "cluster"] => true,
        ["join", "control-plane" | "worker"] => true,
        ["init", l] => lock(l),
        ["rotation", g, l] => !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && lock(l),
        _ => false,
    }
}

/// A lease-based mutual exclusion built from create-only parameter names
/// `<dir>/lock-<epoch>`: whoever creates the lowest free epoch holds the lock; a lock
/// whose lease ran out is taken over by creating the next epoch.
pub struct Election<'a> {
    pub store: &'a Store,
    pub dir: String,
    pub lease: std::time::Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Acquired {
    /// We hold the lock at this epoch.
    Won(u64),
    /// Someone else holds a live lease.
    Held { by: String, epoch: u64 },
}

impl Election<'_> {
    pub async fn try_acquire(&self, me: &str, now: SystemTime) -> Result<Acquired> {
        let locks = self.store.list(&self.dir).await?;
        let latest = locks
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
            .max_by_key(|(e, _)| *e);
        let next = match latest {
            Some((epoch, Some(lock))) => {
                let live = now
                    .duration_since(lock.acquired_at)
                    .map(|age| age < self.lease)
                    .unwrap_or(true);
                if lock.instance_id == me {
                    return Ok(Acquired::Won(epoch));
                }
                if live {
                    return Ok(Acquired::Held {
                        by: lock.instance_id,
                        epoch,
                    });
                }
                epoch + 1
            }
            // A lock we cannot read is treated as expired: never wait on garbage forever.
            Some((epoch, None)) => epoch + 1,
            None => 1,
        };
        let lock = Lock {
            instance_id: me.to_string(),
            acquired_at: now,
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
}

#[cfg(test)]
mod tests {
    use super::is_layout_name;

    #[test]
    fn layout_names_are_exactly_what_haimg_writes() {
        for n in [
            "state",
            "cluster",
            "join/control-plane",
            "join/worker",
            "init/lock-1",
            "init/lock-12",
            "rotation/3/lock-1",
        ] {
            assert!(is_layout_name(n), "{n}");
        }
        for n in [
            "",
            "states",
            "join",
            "join/other",
            "init/lock-",
            "init/lock-x",
            "init/lock-1/x",
            "rotation/x/lock-1",
            "rotation//lock-1",
            "images/ubuntu/latest",
        ] {
            assert!(!is_layout_name(n), "{n}");
        }
    }
}
