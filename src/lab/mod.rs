//! `haimg lab`: a real cluster from a local image on this machine, offline, with no SSH.
//!
//! The cluster tier: the image's root filesystem boots as system containers (systemd as PID
//! 1 under `systemd-nspawn`), each in its own network namespace on a private bridge with no
//! route out, each given exactly the user-data `haimg render` prints for it through
//! cloud-init's NoCloud datasource. Everything lab-only lives here, never in user-data.
//!
//! * [`plan`]: which nodes, addresses and identities (pure);
//! * [`dropins`]: every lab-only change inside a node, with its reason (pure);
//! * [`imds`]: the instance-metadata stand-in (IMDSv2, with instance-profile credentials);
//! * [`asg`]: the Auto Scaling calls nodes make (the termination lifecycle), which the lab
//!   answers as it plays the groups; [`serve`] serves both in the lab's namespace;
//! * [`host`]: namespaces, mounts, cgroups and node processes on this machine, and their undo;
//! * [`cmd`]: `haimg lab up|status|down|stop|start|scale|terminate`;
//! * [`plain`]: a plain base that installs everything at boot (`bake --plain`), to compare.
//!
//! Parameter Store, when the spec's credentials come from SSM, is moto's server in the lab's
//! namespace; the nodes reach it, and the lab's Auto Scaling, through the lab's vendor-data.

pub mod asg;
pub mod cmd;
pub mod dropins;
pub mod host;
pub mod imds;
pub mod plain;
pub mod plan;
pub mod serve;

/// The lab's example cluster (three masters behind a VIP, one worker, join material in SSM).
pub const EXAMPLE: &str = include_str!("../../examples/lab.yaml");
