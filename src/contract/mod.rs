//! The contracts between haimg's parts (DESIGN §4, §6, §7): the documents one part writes
//! and another reads, and the types their fields are made of.
//!
//! This module is a leaf: it uses only [`crate::error`] and [`crate::yaml`], which use nothing
//! else of haimg (a test in `tests/cli.rs` keeps it so). `spec` and `render` write these
//! documents, `deploy` reads them, and the node agent is one more client, not their home.
//!
//! * [`artifacts`]: the AWS CLI inputs `render` writes and `up` applies;
//! * [`types`]: validated domain strings (names, versions, CIDRs, ARNs, SSM paths);
//! * [`node_config`]: `/etc/haimg/node.yaml`, what cloud-init hands the agent;
//! * [`join`]: join material, the cluster state and member records kept in SSM;
//! * [`layout`]: the names of those parameters under the cluster's prefix;
//! * [`secret`]: a value that never reaches a log, a terminal or an error message;
//! * [`pki`]: the public-key pins and certificate keys kubeadm exchanges.

pub mod artifacts;
pub mod join;
pub mod layout;
pub mod node_config;
pub mod pki;
pub mod secret;
pub mod types;

/// The API version of every haimg document (the cluster spec, the node config, credentials).
pub const API_VERSION: &str = "haimg.dev/v1alpha1";
