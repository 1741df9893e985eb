//! haimg: bake air-gapped Kubernetes node images and render self-joining HA kubeadm
//! clusters for AWS.
//!
//! Modules are cut by domain:
//! * [`spec`]: the cluster spec, its validation and JSON Schema;
//! * [`render`]: user-data, launch templates, Auto Scaling groups, NLB and IAM policies;
//! * [`node`]: the node agent's configuration (and, later, the agent itself);
//! * [`yaml`]: the one place YAML is read and written;
//! * [`kubernetes`]: supported Kubernetes releases and their kubeadm APIs.

pub mod aws;
pub mod cli;
pub mod error;
pub mod kubernetes;
pub mod node;
pub mod render;
pub mod spec;
pub mod validate;
pub mod yaml;
