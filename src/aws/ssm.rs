//! Parameter Store: the image parameter, the cluster's owner marker and the parameters of
//! its layout (`up`, `down`), and [`Store`], the JSON documents under the cluster prefix
//! that the node agent and `status` read and write.
//!
//! Every call names the parameter in its error, never its value.

use aws_sdk_ssm::types::{ParameterType, Tag};
use aws_sdk_ssm::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::contract::artifacts::CLUSTER_TAG;
use crate::contract::layout;
use crate::error::{Error, Result};

/// A plain parameter's value; `None` when it does not exist.
pub async fn get(c: &Client, name: &str) -> Result<Option<String>> {
    match c.get_parameter().name(name).send().await {
        Ok(o) => Ok(Some(
            o.parameter()
                .and_then(|p| p.value())
                .unwrap_or_default()
                .to_string(),
        )),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(format!("ssm GetParameter {name}"))(e)),
    }
}

/// haimg's parameters under `prefix` (full names, sorted), by
/// [`layout::is_layout_name`]: anything else under the prefix is not haimg's.
pub async fn layout_parameters(c: &Client, prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut pages = c
        .get_parameters_by_path()
        .path(prefix)
        .recursive(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(Error::aws(format!("ssm GetParametersByPath {prefix}")))?;
        for p in page.parameters() {
            let name = p.name().unwrap_or_default();
            if let Some(rel) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
                if layout::is_layout_name(rel) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Creates a plain parameter tagged `haimg:cluster=<cluster>`, only if it is absent:
/// `false` when it existed already (and was left as it was).
pub async fn create_tagged(c: &Client, name: &str, value: &str, cluster: &str) -> Result<bool> {
    let tag = Tag::builder()
        .key(CLUSTER_TAG)
        .value(cluster)
        .build()
        .map_err(|e| Error::Runtime(format!("ssm tag: {e}")))?;
    match c
        .put_parameter()
        .name(name)
        .r#type(ParameterType::String)
        .value(value)
        .overwrite(false)
        .tags(tag)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_already_exists()) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::aws(format!("ssm PutParameter {name}"))(e)),
    }
}

/// Deletes parameters ten at a time (DeleteParameters' limit), calling `deleted` with each
/// batch once AWS has taken it. Names that do not exist are not an error.
pub async fn delete(
    c: &Client,
    names: &[String],
    mut deleted: impl FnMut(&[String]),
) -> Result<()> {
    for chunk in names.chunks(10) {
        c.delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(Error::aws(format!(
                "ssm DeleteParameters {}",
                chunk.join(",")
            )))?;
        deleted(chunk);
    }
    Ok(())
}

/// JSON documents under one prefix, plain or KMS SecureString.
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

/// Writes a plain String parameter, overwriting it.
pub async fn put_string(c: &Client, name: &str, value: &str, description: &str) -> Result<()> {
    c.put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::String)
        .description(description)
        .overwrite(true)
        .send()
        .await
        .map_err(Error::aws(format!("ssm PutParameter {name}")))?;
    Ok(())
}

/// Deletes one parameter.
pub async fn delete_one(c: &Client, name: &str) -> Result<()> {
    c.delete_parameter()
        .name(name)
        .send()
        .await
        .map_err(Error::aws(format!("ssm DeleteParameter {name}")))?;
    Ok(())
}

/// What sending a Run Command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The command's id.
    Command(String),
    /// The instance's SSM agent has not registered yet (`InvalidInstanceId`): the
    /// real-world way to wait for it is to send again.
    AgentNotReady,
}

/// Sends `commands` to the instance as `AWS-RunShellScript`, killed after `execution`.
pub async fn run_shell_script(
    c: &Client,
    instance: &str,
    commands: &[String],
    execution: std::time::Duration,
) -> Result<Sent> {
    let sent = c
        .send_command()
        .instance_ids(instance)
        .document_name("AWS-RunShellScript")
        .comment("haimg bake")
        // How long the command may wait for the agent to pick it up.
        .timeout_seconds(600)
        .parameters("commands", commands.to_vec())
        .parameters("executionTimeout", vec![execution.as_secs().to_string()])
        .send()
        .await;
    match sent {
        Ok(out) => out
            .command()
            .and_then(|c| c.command_id())
            .map(|id| Sent::Command(id.to_string()))
            .ok_or_else(|| Error::Runtime("SendCommand returned no command id".into())),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_invalid_instance_id()) =>
        {
            Ok(Sent::AgentNotReady)
        }
        Err(e) => Err(Error::aws(format!("ssm SendCommand to {instance}"))(e)),
    }
}

/// Where a command stands on an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandStatus {
    /// Pending, in progress or delayed.
    Running,
    Success,
    /// Failed, timed out, cancelled…: SSM's word for it.
    Ended(String),
}

/// A command's invocation on one instance: its status, what SSM kept of its output (the
/// first 24,000 characters of stdout, 8,000 of stderr) and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub status: CommandStatus,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// The command's invocation on `instance`; `None` right after sending, before it exists.
pub async fn invocation(
    c: &Client,
    command_id: &str,
    instance: &str,
) -> Result<Option<Invocation>> {
    use aws_sdk_ssm::types::CommandInvocationStatus as S;
    let inv = match c
        .get_command_invocation()
        .command_id(command_id)
        .instance_id(instance)
        .send()
        .await
    {
        Ok(i) => i,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_invocation_does_not_exist()) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(Error::aws(format!(
                "ssm GetCommandInvocation {command_id} on {instance}"
            ))(e))
        }
    };
    let status = match inv.status() {
        Some(S::Success) => CommandStatus::Success,
        Some(S::Pending | S::InProgress | S::Delayed) | None => CommandStatus::Running,
        Some(other) => CommandStatus::Ended(other.as_str().to_string()),
    };
    Ok(Some(Invocation {
        status,
        stdout: inv
            .standard_output_content()
            .unwrap_or_default()
            .to_string(),
        stderr: inv.standard_error_content().unwrap_or_default().to_string(),
        exit_code: inv.response_code(),
    }))
}

/// Cancels the command on `instance`, best effort (it may have ended meanwhile).
pub async fn cancel(c: &Client, command_id: &str, instance: &str) {
    let _ = c
        .cancel_command()
        .command_id(command_id)
        .instance_ids(instance)
        .send()
        .await;
}
