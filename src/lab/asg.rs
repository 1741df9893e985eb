//! The Auto Scaling calls a node makes, answered by the lab, which plays the groups: the
//! termination lifecycle (`CompleteLifecycleAction`, `RecordLifecycleActionHeartbeat`) and
//! `SetInstanceHealth` from a node that gave up. Moto has no lifecycle actions, and only the
//! lab knows its instances, so the lab answers these itself (query protocol, as the SDK
//! speaks it to `autoscaling.<region>.amazonaws.com`).
//!
//! As strict as Auto Scaling on what it models: the call must be signed with the node's
//! instance-profile credentials (the access key and session token the metadata stand-in
//! served), name the instance's own group and the `haimg-drain` hook, and a lifecycle
//! action exists only while the lab is terminating the instance and until it is completed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::imds::{Identity, ACCESS_KEY_ID, SESSION_TOKEN, TERMINATED};

/// What a node told the lab's Auto Scaling, appended to the lab's event file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action")]
pub enum Event {
    CompleteLifecycleAction { instance: String, result: String },
    RecordLifecycleActionHeartbeat { instance: String },
    SetInstanceHealth { instance: String, status: String },
}

impl Event {
    pub fn instance(&self) -> &str {
        match self {
            Event::CompleteLifecycleAction { instance, .. }
            | Event::RecordLifecycleActionHeartbeat { instance }
            | Event::SetInstanceHealth { instance, .. } => instance,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub event: Option<Event>,
}

const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

fn ok(action: &str, event: Event) -> Reply {
    Reply {
        status: 200,
        body: format!(
            "<{action}Response xmlns=\"{NS}\"><{action}Result/><ResponseMetadata><RequestId>haimg-lab</RequestId></ResponseMetadata></{action}Response>"
        ),
        event: Some(event),
    }
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status,
        body: format!(
            "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>haimg-lab</RequestId></ErrorResponse>",
            xml_escape(message)
        ),
        event: None,
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Whether a request carries a SigV4 signature by the lab's instance credentials.
pub fn signed_by_lab(headers: &BTreeMap<String, &str>) -> bool {
    let by_key = headers.get("authorization").is_some_and(|a| {
        a.starts_with("AWS4-HMAC-SHA256 ") && a.contains(&format!("Credential={ACCESS_KEY_ID}/"))
    });
    by_key && headers.get("x-amz-security-token") == Some(&SESSION_TOKEN)
}

/// Answers one call (`form`: the decoded request body). `completed`: the instances whose
/// lifecycle action is already completed.
pub fn answer(
    form: &BTreeMap<String, String>,
    signed: bool,
    nodes: &BTreeMap<String, Identity>,
    completed: &BTreeSet<String>,
) -> Reply {
    if !signed {
        return error(
            403,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        );
    }
    let p = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let action = p("Action");
    if p("Version") != "2011-01-01" {
        return error(400, "InvalidAction", "Version must be 2011-01-01");
    }
    let instance = p("InstanceId");
    let Some(node) = nodes.values().find(|n| n.instance_id == instance) else {
        return error(
            400,
            "ValidationError",
            &format!(
                "Instance Id not found - No managed instance found for instance ID: {instance}"
            ),
        );
    };
    match action {
        "CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat" => {
            let active = node.lifecycle_state == TERMINATED && !completed.contains(instance);
            let group_ok = node.group.as_deref() == Some(p("AutoScalingGroupName"));
            let hook_ok = p("LifecycleHookName") == crate::render::names::LIFECYCLE_HOOK;
            if !(active && group_ok && hook_ok) {
                return error(
                    400,
                    "ValidationError",
                    &format!("No active Lifecycle Action found with instance ID {instance}"),
                );
            }
            if action == "RecordLifecycleActionHeartbeat" {
                return ok(
                    action,
                    Event::RecordLifecycleActionHeartbeat {
                        instance: instance.into(),
                    },
                );
            }
            let result = p("LifecycleActionResult");
            if !matches!(result, "CONTINUE" | "ABANDON") {
                return error(
                    400,
                    "ValidationError",
                    "LifecycleActionResult must be CONTINUE or ABANDON",
                );
            }
            ok(
                action,
                Event::CompleteLifecycleAction {
                    instance: instance.into(),
                    result: result.into(),
                },
            )
        }
        "SetInstanceHealth" => {
            let status = p("HealthStatus");
            if node.group.is_none() || !matches!(status, "Healthy" | "Unhealthy") {
                return error(
                    400,
                    "ValidationError",
                    "HealthStatus must be Healthy or Unhealthy of an instance in a group",
                );
            }
            ok(
                action,
                Event::SetInstanceHealth {
                    instance: instance.into(),
                    status: status.into(),
                },
            )
        }
        other => error(
            400,
            "InvalidAction",
            &format!("the lab's Auto Scaling does not model {other}"),
        ),
    }
}

/// The events recorded in `text` (one JSON document per line; a torn last line is skipped).
pub fn events(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(state: &str) -> BTreeMap<String, Identity> {
        let w = Identity {
            instance_id: "i-0000000000000000a".into(),
            hostname: "ip-10-0-0-201.us-west-2.compute.internal".into(),
            availability_zone: "us-west-2a".into(),
            lifecycle_state: state.into(),
            instance_profile: "lab-worker".into(),
            group: Some("lab-worker-general".into()),
        };
        [("10.0.0.201".to_string(), w)].into_iter().collect()
    }

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut f: BTreeMap<String, String> = [("Version", "2011-01-01")]
            .iter()
            .chain(pairs)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f.entry("InstanceId".into())
            .or_insert_with(|| "i-0000000000000000a".into());
        f
    }

    fn complete(result: &str) -> BTreeMap<String, String> {
        form(&[
            ("Action", "CompleteLifecycleAction"),
            ("AutoScalingGroupName", "lab-worker-general"),
            ("LifecycleHookName", "haimg-drain"),
            ("LifecycleActionResult", result),
        ])
    }

    #[test]
    fn a_lifecycle_action_exists_only_while_the_lab_terminates_the_instance() {
        let none = BTreeSet::new();
        let r = answer(&complete("CONTINUE"), true, &nodes("InService"), &none);
        assert_eq!(r.status, 400);
        assert!(r.body.contains("No active Lifecycle Action"), "{}", r.body);
        let r = answer(&complete("CONTINUE"), true, &nodes(TERMINATED), &none);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.event,
            Some(Event::CompleteLifecycleAction {
                instance: "i-0000000000000000a".into(),
                result: "CONTINUE".into()
            })
        );
        assert!(r.body.starts_with("<CompleteLifecycleActionResponse"));
        let done: BTreeSet<String> = ["i-0000000000000000a".to_string()].into();
        let r = answer(&complete("CONTINUE"), true, &nodes(TERMINATED), &done);
        assert_eq!(r.status, 400, "completed once only");
        let r = answer(&complete("MAYBE"), true, &nodes(TERMINATED), &none);
        assert_eq!(r.status, 400);
    }

    #[test]
    fn the_group_the_hook_and_the_signature_must_be_the_instances_own() {
        let none = BTreeSet::new();
        let mut f = complete("CONTINUE");
        f.insert("AutoScalingGroupName".into(), "lab-master".into());
        assert_eq!(answer(&f, true, &nodes(TERMINATED), &none).status, 400);
        let mut f = complete("CONTINUE");
        f.insert("LifecycleHookName".into(), "other".into());
        assert_eq!(answer(&f, true, &nodes(TERMINATED), &none).status, 400);
        let mut f = complete("CONTINUE");
        f.insert("InstanceId".into(), "i-ffffffffffffffff0".into());
        assert_eq!(answer(&f, true, &nodes(TERMINATED), &none).status, 400);
        let r = answer(&complete("CONTINUE"), false, &nodes(TERMINATED), &none);
        assert_eq!(r.status, 403);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20261203/us-west-2/autoscaling/aws4_request, SignedHeaders=host, Signature=00"
        );
        let mut h: BTreeMap<String, &str> = [("authorization".to_string(), auth.as_str())].into();
        assert!(
            !signed_by_lab(&h),
            "the session token is part of the credentials"
        );
        h.insert("x-amz-security-token".into(), SESSION_TOKEN);
        assert!(signed_by_lab(&h));
        h.insert(
            "authorization".into(),
            "AWS4-HMAC-SHA256 Credential=AKIAOTHER/x",
        );
        assert!(!signed_by_lab(&h));
    }

    #[test]
    fn heartbeats_and_health_are_recorded() {
        let none = BTreeSet::new();
        let hb = form(&[
            ("Action", "RecordLifecycleActionHeartbeat"),
            ("AutoScalingGroupName", "lab-worker-general"),
            ("LifecycleHookName", "haimg-drain"),
        ]);
        let r = answer(&hb, true, &nodes(TERMINATED), &none);
        assert_eq!(r.status, 200, "{}", r.body);
        let h = form(&[
            ("Action", "SetInstanceHealth"),
            ("HealthStatus", "Unhealthy"),
            ("ShouldRespectGracePeriod", "false"),
        ]);
        let r = answer(&h, true, &nodes("InService"), &none);
        let line = serde_json::to_string(r.event.as_ref().unwrap()).unwrap();
        assert_eq!(
            events(&format!("{line}\n{{\"action\":")),
            [Event::SetInstanceHealth {
                instance: "i-0000000000000000a".into(),
                status: "Unhealthy".into()
            }],
            "a torn last line is skipped"
        );
        let other = form(&[("Action", "TerminateInstanceInAutoScalingGroup")]);
        let r = answer(&other, true, &nodes("InService"), &none);
        assert!(r.body.contains("does not model"), "{}", r.body);
    }
}
