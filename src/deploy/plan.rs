//! Plan-then-act: from the desired state and what AWS holds now to the list of changes
//! `up` makes, in dependency order. Pure: no AWS call here, so every decision is unit
//! tested and `--dry-run` shows exactly what a real run would do.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::desired::{
    missing_tags, owned_by, Api, AsgSettings, Attribute, AutoScalingGroup, Desired, Group,
    HealthCheck, LaunchTemplate, LaunchTemplateData, LifecycleHook, Listener, LoadBalancer, Tag,
    TargetGroup, CLUSTER_TAG,
};
pub use crate::aws::observed::{
    Observed, ObservedGroup, ObservedLaunchTemplate, ObservedListener, ObservedLoadBalancer,
    ObservedSsm, ObservedTargetGroup,
};
use crate::error::{Error, Result};

/// One field that changes, for the plan display. Long values (user-data) are shown by
/// size and digest only: with static credentials they hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub field: String,
    pub from: String,
    pub to: String,
}

/// Something a `haimg-ref:<kind>:<name>` placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    LoadBalancer,
    TargetGroup,
    Listener,
    LaunchTemplate,
    AutoScalingGroup,
    Parameter,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::LoadBalancer => "load balancer",
            Kind::TargetGroup => "target group",
            Kind::Listener => "listener",
            Kind::LaunchTemplate => "launch template",
            Kind::AutoScalingGroup => "auto scaling group",
            Kind::Parameter => "ssm parameter",
        }
    }
}

/// One change `up` makes. Each is one or two API calls, and names its resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    CreateLoadBalancer(LoadBalancer),
    CreateTargetGroup(TargetGroup),
    ModifyHealthCheck {
        target_group: String,
        to: HealthCheck,
        diff: Vec<Diff>,
    },
    SetAttributes {
        target_group: String,
        attributes: Vec<Attribute>,
        diff: Vec<Diff>,
    },
    CreateListener(Listener),
    ModifyListener {
        arn: String,
        to: Listener,
        diff: Vec<Diff>,
    },
    AddTags {
        kind: Kind,
        name: String,
        /// The ARN (elbv2), id (launch template) or name (group) to tag.
        target: String,
        tags: Vec<Tag>,
    },
    CreateLaunchTemplate(LaunchTemplate),
    /// A new version, made the default.
    NewLaunchTemplateVersion {
        name: String,
        from: i64,
        next: i64,
        description: String,
        data: LaunchTemplateData,
        diff: Vec<Diff>,
    },
    /// Delete haimg's parameters an earlier cluster left under the prefix, before any node
    /// of this one can boot and read them.
    DeleteLeftovers {
        names: Vec<String>,
    },
    CreateGroup(AutoScalingGroup),
    UpdateGroup {
        name: String,
        to: AsgSettings,
        diff: Vec<Diff>,
    },
    AttachTargetGroups {
        group: String,
        arns: Vec<String>,
    },
    PutLifecycleHook {
        group: String,
        hook: LifecycleHook,
    },
    /// The control plane's group never rebalances across zones: that would terminate a
    /// healthy master (and its etcd member) only to launch another elsewhere.
    SuspendAzRebalance {
        group: String,
    },
    /// `P/cluster`: which cluster owns the prefix, and since when.
    WriteMarker {
        name: String,
        cluster: String,
    },
}

impl Change {
    /// Whether the change creates something (for the summary line).
    pub fn is_create(&self) -> bool {
        matches!(
            self,
            Change::CreateLoadBalancer(_)
                | Change::CreateTargetGroup(_)
                | Change::CreateListener(_)
                | Change::CreateLaunchTemplate(_)
                | Change::CreateGroup(_)
                | Change::WriteMarker { .. }
        )
    }

    /// The resource it is about, as `<kind> <name>`.
    pub fn resource(&self) -> String {
        let (kind, name) = match self {
            Change::CreateLoadBalancer(lb) => (Kind::LoadBalancer, lb.name.as_str()),
            Change::CreateTargetGroup(tg) => (Kind::TargetGroup, tg.name.as_str()),
            Change::ModifyHealthCheck { target_group, .. }
            | Change::SetAttributes { target_group, .. } => {
                (Kind::TargetGroup, target_group.as_str())
            }
            Change::CreateListener(l) | Change::ModifyListener { to: l, .. } => {
                return format!("listener {}/{}", l.protocol, l.port)
            }
            Change::AddTags { kind, name, .. } => (*kind, name.as_str()),
            Change::CreateLaunchTemplate(lt) => {
                (Kind::LaunchTemplate, lt.launch_template_name.as_str())
            }
            Change::NewLaunchTemplateVersion { name, .. } => (Kind::LaunchTemplate, name.as_str()),
            Change::DeleteLeftovers { .. } => return "ssm parameters".into(),
            Change::CreateGroup(g) => (Kind::AutoScalingGroup, g.auto_scaling_group_name.as_str()),
            Change::UpdateGroup { name: group, .. }
            | Change::AttachTargetGroups { group, .. }
            | Change::PutLifecycleHook { group, .. }
            | Change::SuspendAzRebalance { group } => (Kind::AutoScalingGroup, group.as_str()),
            Change::WriteMarker { name, .. } => (Kind::Parameter, name.as_str()),
        };
        format!("{} {name}", kind.noun())
    }
}

/// A change as `up --output json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeReport {
    /// `create`, `change` or `delete`.
    pub action: &'static str,
    /// `<kind> <name>`, as in the text plan.
    pub resource: String,
    /// The text plan's line, without its sign.
    pub summary: String,
    /// The fields that change (long values by size and digest).
    pub diff: Vec<Diff>,
}

impl Change {
    pub fn report(&self) -> ChangeReport {
        let (line, diff) = self.line_and_diff();
        let (sign, summary) = line.split_at(1);
        let action = match sign {
            "+" => "create",
            "-" => "delete",
            _ => "change",
        };
        ChangeReport {
            action,
            resource: self.resource(),
            summary: summary.trim_start().to_string(),
            diff: diff.to_vec(),
        }
    }

    /// The plan's line (`+` create, `~` change, `-` delete) and the fields that change.
    fn line_and_diff(&self) -> (String, &[Diff]) {
        let r = self.resource();
        match self {
            Change::CreateLoadBalancer(lb) => (
                format!(
                    "+ {r}: {} {}, subnets {}",
                    lb.scheme,
                    lb.r#type,
                    lb.subnets.join(",")
                ),
                &[],
            ),
            Change::CreateTargetGroup(tg) => (
                format!(
                    "+ {r}: {}/{} {} targets, health check {} {}{}",
                    tg.protocol,
                    tg.port,
                    tg.target_type,
                    tg.health_check_protocol,
                    tg.health_check_port,
                    tg.health_check_path
                ),
                &[],
            ),
            Change::ModifyHealthCheck { diff, .. } => (format!("~ {r}: health check"), diff),
            Change::SetAttributes { diff, .. } => (format!("~ {r}: attributes"), diff),
            Change::CreateListener(l) => (
                format!(
                    "+ {r} → {}",
                    l.default_actions
                        .first()
                        .map(|a| a.target_group_arn.as_str())
                        .unwrap_or("?")
                ),
                &[],
            ),
            Change::ModifyListener { diff, .. } => (format!("~ {r}"), diff),
            Change::AddTags { tags, .. } => (
                format!(
                    "~ {r}: tags {}",
                    tags.iter()
                        .map(|t| format!("{}={}", t.key, t.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &[],
            ),
            Change::CreateLaunchTemplate(lt) => (
                format!(
                    "+ {r}: {} {}, version 1",
                    lt.launch_template_data.instance_type, lt.launch_template_data.image_id
                ),
                &[],
            ),
            Change::NewLaunchTemplateVersion {
                from, next, diff, ..
            } => (
                format!("~ {r}: new version {next}, made the default (was {from})"),
                diff,
            ),
            Change::DeleteLeftovers { names } => (
                format!(
                    "- {r} left by an earlier cluster (no control-plane group exists): {}",
                    names.join(", ")
                ),
                &[],
            ),
            Change::CreateGroup(g) => (
                format!(
                    "+ {r}: min {} max {} desired {}, launch template {} ({})",
                    g.min_size,
                    g.max_size,
                    g.desired_capacity,
                    g.launch_template.launch_template_name,
                    g.launch_template.version
                ),
                &[],
            ),
            Change::UpdateGroup { diff, .. } => (format!("~ {r}"), diff),
            Change::AttachTargetGroups { arns, .. } => (
                format!("~ {r}: attach target group(s) {}", arns.join(", ")),
                &[],
            ),
            Change::PutLifecycleHook { hook, .. } => (
                format!(
                    "~ {r}: lifecycle hook {} ({}, heartbeat {}s, default {})",
                    hook.lifecycle_hook_name,
                    hook.lifecycle_transition,
                    hook.heartbeat_timeout,
                    hook.default_result
                ),
                &[],
            ),
            Change::SuspendAzRebalance { .. } => (format!("~ {r}: suspend AZRebalance"), &[]),
            Change::WriteMarker { cluster, .. } => {
                (format!("+ {r}: owned by cluster {cluster}"), &[])
            }
        }
    }
}

impl fmt::Display for Change {
    /// One line (`+` create, `~` change, `-` delete), then the changed fields indented.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, diff) = self.line_and_diff();
        write!(f, "{line}")?;
        for d in diff {
            write!(f, "\n    {}: {} → {}", d.field, d.from, d.to)?;
        }
        Ok(())
    }
}

/// A value as shown in a diff: short scalars as JSON, long strings by size and digest.
fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) if s.len() > 64 => {
            let digest = Sha256::digest(s.as_bytes());
            let hex = hex::encode(&digest[..6]);
            format!("<{} bytes, sha256 {hex}…>", s.len())
        }
        serde_json::Value::Null => "(none)".into(),
        v => v.to_string(),
    }
}

fn diff_values(path: &str, from: &serde_json::Value, to: &serde_json::Value, out: &mut Vec<Diff>) {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(
                    &p,
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_values(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(Diff {
            field: path.to_string(),
            from: show(a),
            to: show(b),
        }),
        _ => {}
    }
}

/// The fields that differ between two values of the same type.
pub fn diff<T: Serialize>(from: &T, to: &T) -> Vec<Diff> {
    let mut out = Vec::new();
    diff_values(
        "",
        &serde_json::to_value(from).expect("plain data"),
        &serde_json::to_value(to).expect("plain data"),
        &mut out,
    );
    out
}

/// Brings an observed launch template version into the desired one's shape: tag
/// specifications of other resource types (some implementations echo the template's own
/// there) are dropped, and unordered lists are sorted on both sides.
fn comparable(
    actual: &LaunchTemplateData,
    desired: &LaunchTemplateData,
) -> (LaunchTemplateData, LaunchTemplateData) {
    let norm = |d: &LaunchTemplateData| {
        let mut d = d.clone();
        d.security_group_ids.sort();
        for ts in &mut d.tag_specifications {
            ts.tags.sort_by(|a, b| a.key.cmp(&b.key));
        }
        d.tag_specifications
            .sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
        d
    };
    let mut a = norm(actual);
    let types: Vec<&str> = desired
        .tag_specifications
        .iter()
        .map(|t| t.resource_type.as_str())
        .collect();
    a.tag_specifications
        .retain(|t| types.contains(&t.resource_type.as_str()));
    (a, norm(desired))
}

fn sorted_zones(s: &str) -> String {
    let mut v: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    v.sort();
    v.join(",")
}

/// A resource with our name that is not tagged as ours: never touch it.
fn not_ours(kind: Kind, name: &str, cluster: &str) -> Error {
    Error::Runtime(format!(
        "{} {name} exists but is not tagged {CLUSTER_TAG}={cluster}: haimg only changes what it created; remove or rename it, or choose another metadata.name",
        kind.noun()
    ))
}

/// What `up` must do to turn `observed` into `desired` (whose image is already resolved).
/// Errors when a resource with our name belongs to someone else, or when a setting that
/// AWS fixes at creation differs (a replacement haimg does not make behind your back).
pub fn plan(d: &Desired, o: &Observed) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let cluster = d.cluster.as_str();
    if let Some(api) = &d.api {
        plan_load_balancer(&mut out, api, o, cluster)?;
        plan_target_group(&mut out, api, o, cluster)?;
        plan_attributes(&mut out, api, o)?;
        plan_listener(&mut out, api, o)?;
    }
    for g in &d.groups {
        plan_launch_template(&mut out, g, o, cluster)?;
    }
    plan_leftovers(&mut out, d, o)?;
    for g in &d.groups {
        plan_group(&mut out, g, o, cluster)?;
    }
    plan_marker(&mut out, d, o, cluster)?;
    Ok(out)
}

/// The load balancer: created, or checked for what is fixed at creation and retagged.
fn plan_load_balancer(out: &mut Vec<Change>, api: &Api, o: &Observed, cluster: &str) -> Result<()> {
    let lb = &api.load_balancer;
    match &o.load_balancer {
        None => out.push(Change::CreateLoadBalancer(lb.clone())),
        Some(have) => {
            if !owned_by(&have.tags, cluster) {
                return Err(not_ours(Kind::LoadBalancer, &lb.name, cluster));
            }
            let mut want_subnets = lb.subnets.clone();
            want_subnets.sort();
            let mut have_subnets = have.subnets.clone();
            have_subnets.sort();
            if have.r#type != lb.r#type || have.scheme != lb.scheme || have_subnets != want_subnets
            {
                return Err(Error::Runtime(format!(
                    "load balancer {} is {} {} in {}, the spec wants {} {} in {}: these are fixed at creation; run `haimg down` and `haimg up` to replace it",
                    lb.name, have.scheme, have.r#type, have_subnets.join(","), lb.scheme, lb.r#type, want_subnets.join(",")
                )));
            }
            push_tags(
                out,
                Kind::LoadBalancer,
                &lb.name,
                &have.arn,
                &lb.tags,
                &have.tags,
            );
        }
    }
    Ok(())
}

/// The target group: created, or checked, its health check and tags brought in line.
fn plan_target_group(out: &mut Vec<Change>, api: &Api, o: &Observed, cluster: &str) -> Result<()> {
    let tg = &api.target_group;
    match &o.target_group {
        None => out.push(Change::CreateTargetGroup(tg.clone())),
        Some(have) => {
            if !owned_by(&have.tags, cluster) {
                return Err(not_ours(Kind::TargetGroup, &tg.name, cluster));
            }
            if have.identity != tg.identity() {
                return Err(Error::Runtime(format!(
                    "target group {} differs in settings fixed at creation ({}); run `haimg down` and `haimg up` to replace it",
                    tg.name,
                    diff(&have.identity, &tg.identity())
                        .iter()
                        .map(|d| format!("{} {} → {}", d.field, d.from, d.to))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let hc = tg.health_check();
            if have.health_check != hc {
                out.push(Change::ModifyHealthCheck {
                    target_group: tg.name.clone(),
                    diff: diff(&have.health_check, &hc),
                    to: hc,
                });
            }
            push_tags(
                out,
                Kind::TargetGroup,
                &tg.name,
                &have.arn,
                &tg.tags,
                &have.tags,
            );
        }
    }
    Ok(())
}

/// The target group's attributes: after a create, or whenever one differs.
fn plan_attributes(out: &mut Vec<Change>, api: &Api, o: &Observed) -> Result<()> {
    let tg = &api.target_group;
    let have_attrs: &[Attribute] = o
        .target_group
        .as_ref()
        .map(|t| t.attributes.as_slice())
        .unwrap_or(&[]);
    let mut from = BTreeMap::new();
    let mut to = BTreeMap::new();
    for a in &api.attributes.attributes {
        let current = have_attrs
            .iter()
            .find(|h| h.key == a.key)
            .map(|h| h.value.clone());
        if current.as_deref() != Some(a.value.as_str()) {
            from.insert(a.key.clone(), current);
            to.insert(a.key.clone(), Some(a.value.clone()));
        }
    }
    if !to.is_empty() {
        out.push(Change::SetAttributes {
            target_group: tg.name.clone(),
            attributes: api.attributes.attributes.clone(),
            diff: diff(&from, &to),
        });
    }
    Ok(())
}

/// The listener: created, or modified when its protocol or forward differs.
fn plan_listener(out: &mut Vec<Change>, api: &Api, o: &Observed) -> Result<()> {
    let l = &api.listener;
    let tg = &api.target_group;
    match &o.listener {
        None => out.push(Change::CreateListener(l.clone())),
        Some(have) => {
            let tg_arn = o.target_group.as_ref().map(|t| t.arn.clone());
            let forwards_ok = tg_arn
                .as_ref()
                .is_some_and(|a| have.target_group_arns == [a.clone()]);
            if have.protocol != l.protocol || !forwards_ok {
                #[derive(Serialize)]
                struct View<'a> {
                    protocol: &'a str,
                    forward: Vec<String>,
                }
                out.push(Change::ModifyListener {
                    arn: have.arn.clone(),
                    diff: diff(
                        &View {
                            protocol: &have.protocol,
                            forward: have.target_group_arns.clone(),
                        },
                        &View {
                            protocol: &l.protocol,
                            forward: vec![tg_arn.unwrap_or_else(|| tg.name.clone())],
                        },
                    ),
                    to: l.clone(),
                });
            }
            push_tags(
                out,
                Kind::Listener,
                &format!("{}/{}", l.protocol, l.port),
                &have.arn,
                &l.tags,
                &have.tags,
            );
        }
    }
    Ok(())
}

/// One pool's launch template: created, or a new default version when its data differs.
fn plan_launch_template(
    out: &mut Vec<Change>,
    g: &Group,
    o: &Observed,
    cluster: &str,
) -> Result<()> {
    let lt = &g.launch_template;
    let name = &lt.launch_template_name;
    match o.launch_templates.get(name) {
        None => out.push(Change::CreateLaunchTemplate(lt.clone())),
        Some(have) => {
            if !owned_by(&have.tags, cluster) {
                return Err(not_ours(Kind::LaunchTemplate, name, cluster));
            }
            let (a, w) = comparable(&have.default_data, &lt.launch_template_data);
            if a != w {
                out.push(Change::NewLaunchTemplateVersion {
                    name: name.clone(),
                    from: have.default_version,
                    next: have.latest_version + 1,
                    description: lt.version_description.clone(),
                    data: lt.launch_template_data.clone(),
                    diff: diff(&a, &w),
                });
            }
            push_tags(
                out,
                Kind::LaunchTemplate,
                name,
                &have.id,
                &lt.tags(),
                &have.tags,
            );
        }
    }
    Ok(())
}

/// An earlier cluster's parameters under the prefix go before the first master can boot.
fn plan_leftovers(out: &mut Vec<Change>, d: &Desired, o: &Observed) -> Result<()> {
    let master_group_exists = d
        .groups
        .iter()
        .any(|g| g.asg.is_master() && o.groups.contains_key(&g.asg.auto_scaling_group_name));
    if d.ssm_prefix.is_some()
        && d.masters_in_asg
        && !master_group_exists
        && !o.ssm.leftovers.is_empty()
    {
        out.push(Change::DeleteLeftovers {
            names: o.ssm.leftovers.clone(),
        });
    }
    Ok(())
}

/// One pool's group: created (the control plane's never rebalancing), or brought in line.
fn plan_group(out: &mut Vec<Change>, g: &Group, o: &Observed, cluster: &str) -> Result<()> {
    let asg = &g.asg;
    let name = &asg.auto_scaling_group_name;
    match o.groups.get(name) {
        None => {
            out.push(Change::CreateGroup(asg.clone()));
            if asg.is_master() {
                out.push(Change::SuspendAzRebalance {
                    group: name.clone(),
                });
            }
        }
        Some(have) => {
            if !owned_by(&have.tags, cluster) {
                return Err(not_ours(Kind::AutoScalingGroup, name, cluster));
            }
            if let Some(status) = &have.status {
                return Err(Error::Runtime(format!(
                    "auto scaling group {name} is being deleted ({status}); wait for `haimg down` to finish, then run `haimg up` again"
                )));
            }
            let mut a = have.settings.clone();
            a.vpc_zone_identifier = sorted_zones(&a.vpc_zone_identifier);
            let mut w = asg.settings();
            w.vpc_zone_identifier = sorted_zones(&w.vpc_zone_identifier);
            if a != w {
                out.push(Change::UpdateGroup {
                    name: name.clone(),
                    diff: diff(&a, &w),
                    to: asg.settings(),
                });
            }
            let missing: Vec<String> = asg
                .target_group_arns
                .iter()
                .filter(|want| {
                    let resolved = resolve_ref(want, o).ok();
                    !resolved.is_some_and(|r| have.target_group_arns.contains(&r))
                })
                .cloned()
                .collect();
            if !missing.is_empty() {
                out.push(Change::AttachTargetGroups {
                    group: name.clone(),
                    arns: missing,
                });
            }
            for hook in &asg.lifecycle_hook_specification_list {
                if !have.hooks.contains(hook) {
                    out.push(Change::PutLifecycleHook {
                        group: name.clone(),
                        hook: hook.clone(),
                    });
                }
            }
            if asg.is_master() && !have.suspended.iter().any(|p| p == "AZRebalance") {
                out.push(Change::SuspendAzRebalance {
                    group: name.clone(),
                });
            }
            push_tags(
                out,
                Kind::AutoScalingGroup,
                name,
                name,
                &asg.tags(),
                &have.tags,
            );
        }
    }
    Ok(())
}

/// `P/cluster`: written once, and refused when another cluster owns the prefix.
fn plan_marker(out: &mut Vec<Change>, d: &Desired, o: &Observed, cluster: &str) -> Result<()> {
    if let Some(prefix) = &d.ssm_prefix {
        let name = format!("{prefix}/{}", crate::contract::layout::CLUSTER);
        match &o.ssm.marker {
            None => out.push(Change::WriteMarker {
                name,
                cluster: cluster.to_string(),
            }),
            Some(owner) if owner != cluster => {
                return Err(Error::Runtime(format!(
                    "ssm prefix {prefix} belongs to cluster {owner} ({name}): give this cluster its own spec.ssm.prefix"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn push_tags(
    out: &mut Vec<Change>,
    kind: Kind,
    name: &str,
    target: &str,
    want: &[Tag],
    have: &[Tag],
) {
    let tags = missing_tags(want, have);
    if !tags.is_empty() {
        out.push(Change::AddTags {
            kind,
            name: name.to_string(),
            target: target.to_string(),
            tags,
        });
    }
}

/// Groups tagged as this cluster's that the spec no longer has (a removed pool).
pub fn orphans(d: &Desired, tagged: &[String]) -> Vec<String> {
    tagged
        .iter()
        .filter(|t| {
            !d.groups
                .iter()
                .any(|g| &g.asg.auto_scaling_group_name == *t)
        })
        .cloned()
        .collect()
}

const REF_PREFIX: &str = "haimg-ref:";

/// The ARN a `haimg-ref:<kind>:<name>` placeholder stands for, from what exists; other
/// strings are returned as they are.
pub fn resolve_ref(s: &str, o: &Observed) -> Result<String> {
    let Some(rest) = s.strip_prefix(REF_PREFIX) else {
        return Ok(s.to_string());
    };
    let arn = match rest.split_once(':') {
        Some(("load-balancer", _)) => o.load_balancer.as_ref().map(|l| l.arn.clone()),
        Some(("target-group", _)) => o.target_group.as_ref().map(|t| t.arn.clone()),
        _ => {
            return Err(Error::Runtime(format!(
                "unknown reference {s} in the rendered files"
            )))
        }
    };
    arn.ok_or_else(|| Error::Runtime(format!("{s}: does not exist (yet)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reports_as_its_text_line_says() {
        let ch = Change::SetAttributes {
            target_group: "demo-api".into(),
            attributes: vec![],
            diff: ch_diff(),
        };
        assert_eq!(
            ch.to_string(),
            "~ target group demo-api: attributes\n    max_size: 3 → 5"
        );
        let r = ch.report();
        assert_eq!(
            (r.action, r.resource.as_str(), r.summary.as_str()),
            (
                "change",
                "target group demo-api",
                "target group demo-api: attributes"
            )
        );
        assert_eq!(r.diff, ch_diff());
        let del = Change::DeleteLeftovers {
            names: vec!["/haimg/demo/state".into()],
        };
        assert_eq!(del.report().action, "delete");
        let add = Change::WriteMarker {
            name: "/haimg/demo/cluster".into(),
            cluster: "demo".into(),
        };
        assert_eq!(
            (add.report().action, add.report().summary),
            (
                "create",
                "ssm parameter /haimg/demo/cluster: owned by cluster demo".to_string()
            )
        );
    }

    fn ch_diff() -> Vec<Diff> {
        vec![Diff {
            field: "max_size".into(),
            from: "3".into(),
            to: "5".into(),
        }]
    }
    use crate::deploy::desired::Desired;
    use crate::render::{render, templates::Templates, Selection};

    fn desired_from(yaml: &str) -> Desired {
        let spec = crate::spec::load_str(yaml, "test").unwrap().spec;
        let arts = render(&spec, Selection::All, &Templates::embedded()).unwrap();
        Desired::from_artifacts(spec.name.as_str(), Some(spec.ssm.prefix.as_str()), &arts)
            .unwrap()
            .with_image("ami-0123456789abcdef0")
    }

    fn desired() -> Desired {
        desired_from(crate::spec::EXAMPLE)
    }

    /// What AWS would hold right after applying `d` (as `observe` reports it).
    fn applied(d: &Desired) -> Observed {
        let api = d.api.as_ref().unwrap();
        let tg_arn = "arn:aws:elasticloadbalancing:us-west-2:1:targetgroup/demo-api/1".to_string();
        let mut o = Observed {
            load_balancer: Some(ObservedLoadBalancer {
                arn: "arn:lb".into(),
                r#type: api.load_balancer.r#type.clone(),
                scheme: api.load_balancer.scheme.clone(),
                subnets: api.load_balancer.subnets.iter().rev().cloned().collect(),
                tags: api.load_balancer.tags.clone(),
            }),
            target_group: Some(ObservedTargetGroup {
                arn: tg_arn.clone(),
                identity: api.target_group.identity(),
                health_check: api.target_group.health_check(),
                attributes: api
                    .attributes
                    .attributes
                    .iter()
                    .rev()
                    .cloned()
                    .chain([Attribute {
                        key: "stickiness.enabled".into(),
                        value: "false".into(),
                    }])
                    .collect(),
                tags: api.target_group.tags.clone(),
            }),
            listener: Some(ObservedListener {
                arn: "arn:listener".into(),
                protocol: "TCP".into(),
                port: 6443,
                target_group_arns: vec![tg_arn.clone()],
                tags: api.listener.tags.clone(),
            }),
            ..Default::default()
        };
        for g in &d.groups {
            let lt = &g.launch_template;
            let mut data = lt.launch_template_data.clone();
            // AWS and moto may list things in another order, and echo the template's tags.
            data.tag_specifications.reverse();
            data.tag_specifications
                .push(crate::deploy::desired::TagSpecification {
                    resource_type: "launch-template".into(),
                    tags: lt.tags(),
                });
            o.launch_templates.insert(
                lt.launch_template_name.clone(),
                ObservedLaunchTemplate {
                    id: "lt-1".into(),
                    default_version: 1,
                    latest_version: 1,
                    default_data: data,
                    tags: lt.tags().into_iter().rev().collect(),
                },
            );
            let mut settings = g.asg.settings();
            settings.vpc_zone_identifier = settings
                .vpc_zone_identifier
                .split(',')
                .rev()
                .collect::<Vec<_>>()
                .join(",");
            o.groups.insert(
                g.asg.auto_scaling_group_name.clone(),
                ObservedGroup {
                    settings,
                    target_group_arns: if g.asg.is_master() {
                        vec![tg_arn.clone()]
                    } else {
                        vec![]
                    },
                    hooks: g.asg.lifecycle_hook_specification_list.clone(),
                    suspended: if g.asg.is_master() {
                        vec!["AZRebalance".into()]
                    } else {
                        vec![]
                    },
                    tags: g.asg.tags(),
                    status: None,
                },
            );
        }
        o.ssm.marker = Some("demo".into());
        o
    }

    #[test]
    fn nothing_exists_creates_everything_in_dependency_order() {
        let d = desired();
        let mut o = Observed::default();
        o.ssm.leftovers = vec!["/haimg/demo/join/worker".into()];
        let changes = plan(&d, &o).unwrap();
        let kinds: Vec<String> = changes
            .iter()
            .map(|c| c.to_string().lines().next().unwrap().to_string())
            .collect();
        let order: Vec<&str> = changes
            .iter()
            .map(|c| match c {
                Change::CreateLoadBalancer(_) => "lb",
                Change::CreateTargetGroup(_) => "tg",
                Change::SetAttributes { .. } => "attrs",
                Change::CreateListener(_) => "listener",
                Change::CreateLaunchTemplate(_) => "lt",
                Change::DeleteLeftovers { .. } => "leftovers",
                Change::CreateGroup(_) => "asg",
                Change::SuspendAzRebalance { .. } => "suspend",
                Change::WriteMarker { .. } => "marker",
                _ => "other",
            })
            .collect();
        assert_eq!(
            order,
            [
                "lb",
                "tg",
                "attrs",
                "listener",
                "lt",
                "lt",
                "leftovers",
                "asg",
                "suspend",
                "asg",
                "marker"
            ],
            "{kinds:#?}"
        );
        assert!(changes.iter().all(|c| c.resource().len() > 3));
    }

    #[test]
    fn an_applied_cluster_needs_no_change() {
        let d = desired();
        let o = applied(&d);
        assert_eq!(plan(&d, &o).unwrap(), vec![]);
    }

    #[test]
    fn another_instance_type_is_one_new_launch_template_version() {
        let d = desired();
        let o = applied(&d);
        let mut d2 = d.clone();
        d2.groups[1]
            .launch_template
            .launch_template_data
            .instance_type = "m5.xlarge".into();
        let changes = plan(&d2, &o).unwrap();
        assert_eq!(changes.len(), 1, "{changes:#?}");
        let Change::NewLaunchTemplateVersion {
            name, diff, from, ..
        } = &changes[0]
        else {
            panic!("{changes:?}")
        };
        assert_eq!(name, "demo-worker-general");
        assert_eq!(*from, 1);
        assert_eq!(
            diff,
            &[Diff {
                field: "InstanceType".into(),
                from: "\"t3.large\"".into(),
                to: "\"m5.xlarge\"".into()
            }]
        );
    }

    #[test]
    fn user_data_changes_show_no_content() {
        let d = desired();
        let o = applied(&d);
        let mut d2 = d.clone();
        d2.groups[0].launch_template.launch_template_data.user_data = "c2VjcmV0LXRva2VuLWFiY2RlZi4wMTIzNDU2Nzg5YWJjZGVmLXNlY3JldC10b2tlbi1hYmNkZWYuMDEyMzQ1Njc4OWFiY2RlZg==".into();
        let changes = plan(&d2, &o).unwrap();
        let text = changes[0].to_string();
        assert!(text.contains("UserData: <"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
    }

    #[test]
    fn drift_is_repaired_field_by_field() {
        let d = desired();
        let mut o = applied(&d);
        let tg = o.target_group.as_mut().unwrap();
        tg.attributes
            .retain(|a| a.key != "preserve_client_ip.enabled");
        tg.attributes.push(Attribute {
            key: "preserve_client_ip.enabled".into(),
            value: "true".into(),
        });
        tg.health_check.health_check_path = "/healthz".into();
        tg.tags.retain(|t| t.key != "team");
        let g = o.groups.get_mut("demo-master").unwrap();
        g.suspended.clear();
        g.hooks.clear();
        g.settings.max_size = 5;
        g.target_group_arns.clear();
        let changes = plan(&d, &o).unwrap();
        let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        let all = text.join("\n");
        for needle in [
            "~ target group demo-api: health check\n    HealthCheckPath: \"/healthz\" → \"/readyz\"",
            "~ target group demo-api: attributes\n    preserve_client_ip.enabled: \"true\" → \"false\"",
            "~ target group demo-api: tags team=platform",
            "~ auto scaling group demo-master\n    MaxSize: 5 → 3",
            "~ auto scaling group demo-master: attach target group(s) haimg-ref:target-group:demo-api",
            "~ auto scaling group demo-master: lifecycle hook haimg-drain",
            "~ auto scaling group demo-master: suspend AZRebalance",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert_eq!(changes.len(), 7, "{all}");
    }

    #[test]
    fn resources_of_others_and_fixed_settings_are_refused() {
        let d = desired();
        let mut o = applied(&d);
        o.load_balancer
            .as_mut()
            .unwrap()
            .tags
            .retain(|t| t.key != CLUSTER_TAG);
        let e = plan(&d, &o).unwrap_err().to_string();
        assert!(
            e.contains("load balancer demo-api exists but is not tagged haimg:cluster=demo"),
            "{e}"
        );

        let mut o = applied(&d);
        o.target_group.as_mut().unwrap().identity.port = 443;
        let e = plan(&d, &o).unwrap_err().to_string();
        assert!(
            e.contains("target group demo-api differs") && e.contains("Port 443 → 6443"),
            "{e}"
        );

        let mut o = applied(&d);
        o.ssm.marker = Some("other".into());
        let e = plan(&d, &o).unwrap_err().to_string();
        assert!(e.contains("belongs to cluster other"), "{e}");

        let mut o = applied(&d);
        o.groups.get_mut("demo-worker-general").unwrap().status = Some("Delete in progress".into());
        let e = plan(&d, &o).unwrap_err().to_string();
        assert!(e.contains("being deleted"), "{e}");
    }

    #[test]
    fn leftovers_are_cleared_only_before_the_control_plane_exists() {
        let d = desired();
        let mut o = applied(&d);
        o.ssm.leftovers = vec!["/haimg/demo/state".into()];
        assert!(
            plan(&d, &o).unwrap().is_empty(),
            "a live cluster's state is never deleted"
        );
        o.groups.remove("demo-master");
        let changes = plan(&d, &o).unwrap();
        assert!(
            matches!(&changes[0], Change::DeleteLeftovers { names } if names == &["/haimg/demo/state"])
        );
        assert!(matches!(&changes[1], Change::CreateGroup(g) if g.is_master()));
    }

    #[test]
    fn groups_no_longer_in_the_spec_are_orphans() {
        let d = desired();
        let tagged = vec!["demo-master".to_string(), "demo-worker-old".to_string()];
        assert_eq!(orphans(&d, &tagged), ["demo-worker-old"]);
        assert!(orphans(&d, &tagged[..1]).is_empty());
    }

    #[test]
    fn fixed_masters_manage_worker_pools_only() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/cluster-vip.yaml"
        ))
        .unwrap();
        let d = desired_from(&text);
        assert!(d.api.is_none());
        assert!(!d.masters_in_asg);
        let mut o = Observed::default();
        o.ssm.leftovers = vec!["/haimg/x/state".into()];
        let changes = plan(&d, &o).unwrap();
        assert!(
            changes.iter().all(|c| !matches!(
                c,
                Change::DeleteLeftovers { .. }
                    | Change::SuspendAzRebalance { .. }
                    | Change::CreateLoadBalancer(_)
            )),
            "{changes:#?}"
        );
        assert!(changes.iter().any(|c| matches!(c, Change::CreateGroup(_))));
    }
}
