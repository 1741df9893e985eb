//! Names of the AWS resources haimg creates, all derived from the cluster name.
//!
//! A cluster name is at most 20 characters, so every name here fits its AWS limit
//! (load balancers and target groups: 32).

use crate::contract::types::{ClusterName, PoolName};

/// The termination lifecycle hook on every Auto Scaling group.
pub const LIFECYCLE_HOOK: &str = "haimg-drain";
/// The API server port behind the load balancer.
pub const API_PORT: u16 = 6443;

pub fn load_balancer(c: &ClusterName) -> String {
    format!("{c}-api")
}
pub fn target_group(c: &ClusterName) -> String {
    format!("{c}-api")
}
pub fn master_group(c: &ClusterName) -> String {
    format!("{c}-master")
}
pub fn worker_group(c: &ClusterName, pool: &PoolName) -> String {
    format!("{c}-worker-{pool}")
}

/// A value that only exists once the named resource has been created. `haimg up` replaces
/// it with the resource's ARN; AWS CLI users substitute it themselves (README).
pub fn reference(kind: &str, name: &str) -> String {
    format!("haimg-ref:{kind}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_names_fit_aws_limits() {
        let c = ClusterName::try_from("abcdefghij0123456789").unwrap();
        assert!(load_balancer(&c).len() <= 32);
        assert!(target_group(&c).len() <= 32);
        let p = PoolName::try_from("abcdefghij0123456789").unwrap();
        assert!(
            worker_group(&c, &p).len() <= 128,
            "launch template names are at most 128"
        );
    }
}
