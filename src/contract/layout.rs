//! The names of haimg's parameters under the cluster's prefix `P` (DESIGN §6), relative to
//! `P`: the one place they are spelled. The node agent writes them, `haimg up` writes
//! [`CLUSTER`], `haimg status` reads them and `haimg down` deletes exactly these.

/// The cluster's phase and its etcd health ([`super::join::State`]).
pub const STATE: &str = "state";
/// The owner marker `haimg up` writes (which cluster owns the prefix).
pub const CLUSTER: &str = "cluster";
/// Control-plane join material ([`super::join::JoinMaterial`], SecureString).
pub const JOIN_CONTROL_PLANE: &str = "join/control-plane";
/// Worker join material, without the certificate key (SecureString).
pub const JOIN_WORKER: &str = "join/worker";
/// When each join material expires ([`super::join::PublishedTimes`], no secret).
pub const JOIN_TIMES: &str = "join/times";
/// Where the first master's election takes its locks.
pub const INIT_LOCKS: &str = "init";

/// Where one rotation generation takes its locks.
pub fn rotation_locks(generation: u64) -> String {
    format!("rotation/{generation}")
}

/// One member's record ([`super::join::MemberRecord`]), by instance id.
pub fn member(instance_id: &str) -> String {
    format!("members/{instance_id}")
}

/// Whether `rel` (a name relative to `P`) is one of the parameters haimg writes (DESIGN §6):
/// `state`, `cluster` (written by `haimg up`), `join/control-plane`, `join/worker`,
/// `members/<instance-id>`, `init/lock-<epoch>` and `rotation/<generation>/lock-<epoch>`. `haimg down` deletes these
/// and nothing else, so a prefix shared by mistake never loses a stranger's parameter.
pub fn is_layout_name(rel: &str) -> bool {
    let lock = |s: &str| {
        s.strip_prefix("lock-")
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
    };
    match rel.split('/').collect::<Vec<_>>().as_slice() {
        [STATE | CLUSTER] => true,
        ["members", id] => {
            id.starts_with("i-")
                && id[2..].bytes().all(|b| b.is_ascii_alphanumeric())
                && id.len() > 2
        }
        ["join", "control-plane" | "worker" | "times"] => true,
        ["init", l] => lock(l),
        ["rotation", g, l] => !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && lock(l),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_are_exactly_what_haimg_writes() {
        for n in [
            "state",
            "cluster",
            "join/control-plane",
            "join/worker",
            "join/times",
            "init/lock-1",
            "init/lock-12",
            "rotation/3/lock-1",
            "members/i-0123456789abcdef0",
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
            "members/",
            "members/i-",
            "members/node-1",
            "members/i-1/x",
        ] {
            assert!(!is_layout_name(n), "{n}");
        }
    }
}
