//! haimg: bake air-gapped Kubernetes node images and render self-joining HA kubeadm
//! clusters for AWS.
//!
//! Modules are cut by domain:
//! * [`contract`]: the documents haimg's parts exchange and their types (a leaf);
//! * [`spec`]: the cluster spec, its validation and JSON Schema;
//! * [`render`]: user-data, launch templates, Auto Scaling groups, NLB and IAM policies;
//! * [`recipe`]: image recipes (what goes into a node image, pinned);
//! * [`deploy`]: `up`, `status`, `down`: plan from the rendered files and what AWS holds,
//!   then apply;
//! * [`bake`]: plan and run an AMI bake (SSM Run Command, no SSH);
//! * [`node`]: the node agent (bootstrap, refresh, reconcile, watch);
//! * [`lab`]: a real cluster from a local image, as system containers on this machine;
//! * [`aws`]: every AWS SDK call, one module per service, in domain terms (the edge);
//! * [`backoff`]: bounded waiting with jittered exponential backoff;
//! * [`cache`]: the user's cache directory and remembered file digests;
//! * [`progress`]: progress lines (`--quiet`) and the tracing setup every command shares;
//! * [`files`]: files that hold secrets (owner-only, never written over);
//! * [`yaml`]: the one place YAML is read and written;
//! * [`kubernetes`]: supported Kubernetes releases and their kubeadm APIs.

pub mod aws;
pub mod backoff;
pub mod bake;
pub mod cache;
pub mod cli;
pub mod contract;
pub mod deploy;
pub mod docs;
pub mod error;
pub mod files;
pub mod kubernetes;
pub mod lab;
pub mod node;
pub mod progress;
pub mod recipe;
pub mod render;
pub mod signals;
pub mod spec;
pub mod validate;
pub mod yaml;
