//! The agent's view of SSM Parameter Store under the cluster prefix `P` (DESIGN §6): the
//! JSON documents of [`Store`] (in [`crate::aws::ssm`], whose calls they are) and the
//! lease-based locks built on its create-only writes.

use std::time::{Duration, SystemTime};

pub use crate::aws::ssm::{Created, Store};
use crate::contract::join::Lock;
use crate::error::{Error, Result};

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
