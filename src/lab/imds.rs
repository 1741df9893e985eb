//! An IMDSv2 stand-in for the lab's nodes: what an EC2 instance reads about itself, answered
//! by the caller's address, at 169.254.169.254 inside the lab's namespace.
//!
//! As strict as EC2 on what it models: every read needs a session token from
//! `PUT /latest/api/token` (with a TTL of 1-21600 s), a request with `X-Forwarded-For` is
//! refused (EC2 does so to stop proxies relaying credentials), unknown paths are 404.
//! Like EC2, it serves the instance profile's credentials: the lab's test credentials,
//! which only the lab's own AWS stand-ins accept.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::plan::LabNode;

/// A node's metadata, as the stand-in serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub instance_id: String,
    pub hostname: String,
    pub availability_zone: String,
    /// `InService`, or `Terminated` once the lab scales the node in.
    pub lifecycle_state: String,
    /// The instance profile (its role's credentials are served, as on EC2).
    pub instance_profile: String,
    /// The Auto Scaling group (workers; fixed masters are in none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Identity {
    pub fn of(node: &LabNode) -> Identity {
        Identity {
            instance_id: node.instance_id.clone(),
            hostname: node.name.clone(),
            availability_zone: node.availability_zone.clone(),
            lifecycle_state: IN_SERVICE.into(),
            instance_profile: node.instance_profile.clone(),
            group: node.group.clone(),
        }
    }
}

/// Auto Scaling's target lifecycle states, as IMDS names them.
pub const IN_SERVICE: &str = "InService";
pub const TERMINATED: &str = "Terminated";

/// The lab's test credentials, served as every node's instance-profile credentials. Not a
/// secret (they open nothing but the lab's stand-ins), and never logged all the same.
pub const ACCESS_KEY_ID: &str = "ASIAHAIMGLABTESTKEY0";
const SECRET_ACCESS_KEY: &str = "haimg-lab-test-secret-access-key-not-a-secret";
pub const SESSION_TOKEN: &str = "haimg-lab-test-session-token";

/// The credentials document EC2 serves at `iam/security-credentials/<role>`.
fn credentials(now: std::time::SystemTime) -> String {
    let t = |s: std::time::SystemTime| humantime::format_rfc3339_seconds(s).to_string();
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": t(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": ACCESS_KEY_ID,
        "SecretAccessKey": SECRET_ACCESS_KEY,
        "Token": SESSION_TOKEN,
        "Expiration": t(now + Duration::from_secs(6 * 3600)),
    })
    .to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: BTreeMap<String, &'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// A token's lifetime, echoed in `X-aws-ec2-metadata-token-ttl-seconds` as EC2 does
    /// (the SDKs refuse a token without it).
    pub ttl: Option<u64>,
}

impl Response {
    fn status(status: u16) -> Response {
        Response {
            status,
            body: String::new(),
            ttl: None,
        }
    }
}

const MAX_TTL_S: u64 = 21_600;

/// The tokens handed out, with the address each was given to and when it expires.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: BTreeMap<String, (Ipv4Addr, Instant)>,
    counter: u64,
}

/// Parses a request head (everything before the blank line).
pub fn parse(head: &str) -> Option<Request<'_>> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (first.next()?, first.next()?, first.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (k, v) = l.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim());
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

/// What the stand-in answers `peer` (`None`: an address that is no lab node).
pub fn answer(
    req: &Request,
    peer: Ipv4Addr,
    who: Option<&Identity>,
    tokens: &mut Tokens,
    now: Instant,
) -> Response {
    if req.headers.contains_key("x-forwarded-for") {
        return Response::status(403);
    }
    if req.path == "/latest/api/token" {
        if req.method != "PUT" {
            return Response::status(405);
        }
        let ttl = req
            .headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.parse::<u64>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=MAX_TTL_S).contains(t)) else {
            return Response::status(400);
        };
        tokens.counter += 1;
        let token = format!("lab-{peer}-{}-{}", tokens.counter, now.elapsed().as_nanos());
        tokens
            .issued
            .insert(token.clone(), (peer, now + Duration::from_secs(ttl)));
        return Response {
            status: 200,
            body: token,
            ttl: Some(ttl),
        };
    }
    let valid = req
        .headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|t| tokens.issued.get(*t))
        .is_some_and(|(to, until)| *to == peer && now < *until);
    if !valid {
        return Response::status(401);
    }
    if req.method != "GET" {
        return Response::status(405);
    }
    let Some(id) = who else {
        return Response::status(404);
    };
    let body = match req.path.strip_prefix("/latest/meta-data/") {
        Some("instance-id") => id.instance_id.clone(),
        Some("local-hostname") | Some("hostname") => id.hostname.clone(),
        Some("local-ipv4") => peer.to_string(),
        Some("placement/availability-zone") => id.availability_zone.clone(),
        Some("placement/region") => {
            let az = &id.availability_zone;
            az[..az.len().saturating_sub(1)].to_string()
        }
        Some("autoscaling/target-lifecycle-state") if id.group.is_some() => {
            id.lifecycle_state.clone()
        }
        Some("iam/security-credentials/") | Some("iam/security-credentials") => {
            id.instance_profile.clone()
        }
        Some(p) if p.strip_prefix("iam/security-credentials/") == Some(&id.instance_profile) => {
            credentials(std::time::SystemTime::now())
        }
        _ => return Response::status(404),
    };
    Response {
        status: 200,
        body,
        ttl: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, path: &'a str, h: &[(&str, &'a str)]) -> Request<'a> {
        Request {
            method,
            path,
            headers: h.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn id() -> Identity {
        Identity {
            instance_id: "i-0123456789abcdef0".into(),
            hostname: "ip-10-0-0-201.us-west-2.compute.internal".into(),
            availability_zone: "us-west-2a".into(),
            lifecycle_state: "InService".into(),
            instance_profile: "lab-worker".into(),
            group: Some("lab-worker-general".into()),
        }
    }

    fn get(path: &str, who: &Identity) -> Response {
        let me = Ipv4Addr::new(10, 0, 0, 201);
        let (mut t, now) = (Tokens::default(), Instant::now());
        let h = [("x-aws-ec2-metadata-token-ttl-seconds", "60")];
        let tok = answer(
            &req("PUT", "/latest/api/token", &h),
            me,
            Some(who),
            &mut t,
            now,
        )
        .body;
        let h = [("x-aws-ec2-metadata-token", tok.as_str())];
        answer(&req("GET", path, &h), me, Some(who), &mut t, now)
    }

    #[test]
    fn the_instance_profile_credentials_are_served_as_ec2_serves_them() {
        let who = id();
        let r = get("/latest/meta-data/iam/security-credentials/", &who);
        assert_eq!((r.status, r.body.as_str()), (200, "lab-worker"));
        let r = get(
            "/latest/meta-data/iam/security-credentials/lab-worker",
            &who,
        );
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["Code"], "Success");
        assert_eq!(v["AccessKeyId"], ACCESS_KEY_ID);
        let exp = humantime::parse_rfc3339(v["Expiration"].as_str().unwrap()).unwrap();
        assert!(exp > std::time::SystemTime::now() + Duration::from_secs(3600));
        let r = get(
            "/latest/meta-data/iam/security-credentials/other-role",
            &who,
        );
        assert_eq!(r.status, 404, "only the node's own role");
    }

    #[test]
    fn only_an_instance_in_a_group_has_a_lifecycle_state() {
        let mut who = id();
        let path = "/latest/meta-data/autoscaling/target-lifecycle-state";
        assert_eq!(get(path, &who).body, "InService");
        who.lifecycle_state = TERMINATED.into();
        assert_eq!(get(path, &who).body, "Terminated");
        who.group = None;
        assert_eq!(
            get(path, &who).status,
            404,
            "as EC2 answers outside a group"
        );
    }

    #[test]
    fn reads_need_a_token_given_to_the_same_address_and_still_valid() {
        let (me, other) = (Ipv4Addr::new(10, 0, 0, 201), Ipv4Addr::new(10, 0, 0, 11));
        let mut t = Tokens::default();
        let now = Instant::now();
        let who = id();
        let r = answer(
            &req("GET", "/latest/meta-data/instance-id", &[]),
            me,
            Some(&who),
            &mut t,
            now,
        );
        assert_eq!(r.status, 401, "IMDSv1 is off");
        assert_eq!(
            answer(
                &req("PUT", "/latest/api/token", &[]),
                me,
                Some(&who),
                &mut t,
                now
            )
            .status,
            400
        );
        assert_eq!(
            answer(
                &req(
                    "PUT",
                    "/latest/api/token",
                    &[("x-aws-ec2-metadata-token-ttl-seconds", "21601")]
                ),
                me,
                Some(&who),
                &mut t,
                now
            )
            .status,
            400
        );
        let tok = answer(
            &req(
                "PUT",
                "/latest/api/token",
                &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
            ),
            me,
            Some(&who),
            &mut t,
            now,
        );
        assert_eq!((tok.status, tok.ttl), (200, Some(60)));
        let with = |path: &'static str, tok: &str, peer, t: &mut Tokens, at| {
            let h = [("x-aws-ec2-metadata-token", tok)];
            answer(&req("GET", path, &h), peer, Some(&who), t, at)
        };
        let r = with("/latest/meta-data/instance-id", &tok.body, me, &mut t, now);
        assert_eq!((r.status, r.body.as_str()), (200, "i-0123456789abcdef0"));
        let r = with("/latest/meta-data/local-ipv4", &tok.body, me, &mut t, now);
        assert_eq!(r.body, "10.0.0.201");
        let r = with(
            "/latest/meta-data/placement/region",
            &tok.body,
            me,
            &mut t,
            now,
        );
        assert_eq!(r.body, "us-west-2");
        assert_eq!(
            with("/latest/meta-data/iam/info", &tok.body, me, &mut t, now).status,
            404
        );
        assert_eq!(
            with(
                "/latest/meta-data/instance-id",
                &tok.body,
                other,
                &mut t,
                now
            )
            .status,
            401,
            "another node's token"
        );
        let later = now + Duration::from_secs(61);
        assert_eq!(
            with(
                "/latest/meta-data/instance-id",
                &tok.body,
                me,
                &mut t,
                later
            )
            .status,
            401,
            "expired"
        );
        let h = [
            ("x-aws-ec2-metadata-token", tok.body.as_str()),
            ("x-forwarded-for", "1.2.3.4"),
        ];
        assert_eq!(
            answer(
                &req("GET", "/latest/meta-data/instance-id", &h),
                me,
                Some(&who),
                &mut t,
                now
            )
            .status,
            403
        );
    }

    #[test]
    fn heads_are_parsed_with_lowercase_header_names() {
        let r = parse("PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600").unwrap();
        assert_eq!((r.method, r.path), ("PUT", "/latest/api/token"));
        assert_eq!(r.headers["x-aws-ec2-metadata-token-ttl-seconds"], "21600");
        assert!(parse("GET / SPDY/3").is_none());
        assert!(parse("").is_none());
    }
}
