//! Validated domain types.
//!
//! Every string the spec hands to AWS or kubeadm goes through one of these. Each type:
//! * is built with `TryFrom<&str>` / `FromStr`, and `Deserialize` goes through that check;
//! * publishes a JSON Schema (with a `pattern` where one regular expression captures it);
//! * explains a rejected value in words a user can act on.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// Declares a `String` newtype whose values are checked by `$check`.
macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, pattern: $pattern:expr, example: $example:expr, check: $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PATTERN: Option<&'static str> = $pattern;
            pub const EXAMPLE: &'static str = $example;
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(s).map(|()| Self(s.to_string()))
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::try_from(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s.as_str()).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let doc = concat!($(stringify!($doc)),*);
                let description = doc_text(doc);
                let mut s = json_schema!({
                    "type": "string",
                    "description": description,
                    "examples": [$example],
                });
                if let Some(p) = $pattern {
                    s.insert("pattern".into(), p.into());
                }
                s
            }
        }
    };
}

/// Turns the stringified `#[doc = "..."]` attributes of a type into plain text.
fn doc_text(stringified: &str) -> String {
    stringified
        .split("doc = \"")
        .skip(1)
        .map(|s| s.trim_end_matches(['"', ' ']).trim())
        .collect::<Vec<_>>()
        .join(" ")
        .replace("\\\"", "\"")
        .replace("\\'", "'")
        .replace("\\\\", "\\")
}

fn matches_charset(s: &str, min: usize, max: usize, ok: impl Fn(char) -> bool) -> bool {
    (min..=max).contains(&s.chars().count()) && s.chars().all(ok)
}

fn hex_id(s: &str, prefix: &str, what: &str) -> Result<(), String> {
    let ok = s.strip_prefix(prefix).is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not {what}: expected `{prefix}` followed by 8 or 17 lowercase hex digits"
        ))
    }
}

string_type!(
    /// Cluster name: 1-20 characters, lowercase letters, digits and '-', starting with a letter. AWS names are built from it (the NLB and target group names, at most 32 characters, are `<name>-api`).
    ClusterName,
    pattern: Some("^(?=.{1,20}$)[a-z](-?[a-z0-9])*$"),
    example: "demo",
    check: |s| {
        let ok = s.starts_with(|c: char| c.is_ascii_lowercase())
            && matches_charset(s, 1, 20, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(format!(
                "`{s}` is not a valid cluster name: use 1-20 lowercase letters, digits and '-', starting with a letter (AWS load balancer names built from it are limited to 32 characters)"
            ));
        }
        if s.ends_with('-') || s.contains("--") {
            return Err(format!("`{s}` is not a valid cluster name: it must not end with '-' or contain '--' (AWS load balancer names forbid both)"));
        }
        Ok(())
    }
);

string_type!(
    /// Worker pool name: 1-20 lowercase letters, digits and '-', starting with a letter.
    PoolName,
    pattern: Some("^[a-z][a-z0-9-]{0,19}$"),
    example: "general",
    check: |s| {
        if s.starts_with(|c: char| c.is_ascii_lowercase())
            && matches_charset(s, 1, 20, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            Ok(())
        } else {
            Err(format!("`{s}` is not a valid pool name: use 1-20 lowercase letters, digits and '-', starting with a letter"))
        }
    }
);

string_type!(
    /// A node's host name (a DNS label, as Kubernetes node names are).
    NodeName,
    pattern: Some("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    example: "m1",
    check: |s| {
        let ok = matches_charset(s, 1, 63, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok { Ok(()) } else { Err(format!("`{s}` is not a node name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'")) }
    }
);

string_type!(
    /// A network interface name (at most 15 characters, no spaces or '/').
    InterfaceName,
    pattern: Some("^[A-Za-z0-9_.:-]{1,15}$"),
    example: "eth0",
    check: |s| {
        if matches_charset(s, 1, 15, |c| c.is_ascii_alphanumeric() || "_.:-".contains(c)) {
            Ok(())
        } else {
            Err(format!("`{s}` is not a network interface name (1-15 of A-Z a-z 0-9 _ . : -)"))
        }
    }
);

string_type!(
    /// A container image reference (registry/repository:tag or @digest).
    ImageRef,
    pattern: Some("^(?=.{3,255}$)[a-z0-9][a-z0-9._/:@-]*[:@][a-z0-9._/:@-]*[a-z0-9]$"),
    example: "docker.io/library/haproxy:2.8.14",
    check: |s| {
        let ok = s.len() <= 255
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/:@-".contains(c))
            && (s.contains(':') || s.contains('@'));
        if ok { Ok(()) } else { Err(format!("`{s}` is not a pinned container image reference (name:tag or name@digest)")) }
    }
);

string_type!(
    /// An EC2 image id.
    AmiId,
    pattern: Some("^ami-([0-9a-f]{8}|[0-9a-f]{17})$"),
    example: "ami-0123456789abcdef0",
    check: |s| hex_id(s, "ami-", "an AMI id")
);

string_type!(
    /// A VPC id.
    VpcId,
    pattern: Some("^vpc-([0-9a-f]{8}|[0-9a-f]{17})$"),
    example: "vpc-0123456789abcdef0",
    check: |s| hex_id(s, "vpc-", "a VPC id")
);

string_type!(
    /// A subnet id.
    SubnetId,
    pattern: Some("^subnet-([0-9a-f]{8}|[0-9a-f]{17})$"),
    example: "subnet-0123456789abcdef0",
    check: |s| hex_id(s, "subnet-", "a subnet id")
);

string_type!(
    /// A security group id.
    SecurityGroupId,
    pattern: Some("^sg-([0-9a-f]{8}|[0-9a-f]{17})$"),
    example: "sg-0123456789abcdef0",
    check: |s| hex_id(s, "sg-", "a security group id")
);

string_type!(
    /// An AWS region code.
    Region,
    pattern: Some("^[a-z]{2}(-[a-z]+)+-[0-9]$"),
    example: "us-west-2",
    check: |s| {
        let parts: Vec<&str> = s.split('-').collect();
        let ok = parts.len() >= 3
            && parts[0].len() == 2
            && parts.iter().take(parts.len() - 1).all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts.last().is_some_and(|d| d.len() == 1 && d.as_bytes()[0].is_ascii_digit());
        if ok { Ok(()) } else { Err(format!("`{s}` is not an AWS region code (e.g. us-west-2, eu-central-1)")) }
    }
);

string_type!(
    /// An EC2 instance type, e.g. t3.large or m6i.2xlarge.
    InstanceType,
    pattern: Some("^[a-z][a-z0-9-]{0,31}\\.[a-z0-9-]{1,32}$"),
    example: "t3.large",
    check: |s| {
        let ok = s.split_once('.').is_some_and(|(fam, size)| {
            fam.starts_with(|c: char| c.is_ascii_lowercase())
                && matches_charset(fam, 1, 32, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && matches_charset(size, 1, 32, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
        if ok { Ok(()) } else { Err(format!("`{s}` is not an EC2 instance type (e.g. t3.large)")) }
    }
);

string_type!(
    /// The name of an existing IAM instance profile.
    InstanceProfileName,
    pattern: Some("^[A-Za-z0-9+=,.@_-]{1,128}$"),
    example: "demo-master",
    check: |s| {
        if matches_charset(s, 1, 128, |c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)) {
            Ok(())
        } else {
            Err(format!("`{s}` is not an IAM instance profile name (1-128 of A-Z a-z 0-9 + = , . @ _ -)"))
        }
    }
);

string_type!(
    /// An SSM Parameter Store path: starts with '/', no trailing '/', at most 900 characters of A-Z a-z 0-9 _ . - /, not under the reserved /aws or /ssm.
    SsmPath,
    pattern: Some("^(?=.{2,900}$)(?!/([aA][wW][sS]|[sS][sS][mM]))(/[A-Za-z0-9_.-]+)+$"),
    example: "/haimg/demo",
    check: |s| {
        let ok = s.starts_with('/')
            && !s.ends_with('/')
            && !s.contains("//")
            && matches_charset(s, 2, 900, |c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
        if !ok {
            return Err(format!(
                "`{s}` is not an SSM parameter path: it must start with '/', not end with '/', and use only A-Z a-z 0-9 _ . - /"
            ));
        }
        let first = s[1..].split('/').next().unwrap_or_default().to_ascii_lowercase();
        if first.starts_with("aws") || first.starts_with("ssm") {
            return Err(format!("`{s}` is under a prefix AWS reserves (/aws, /ssm)"));
        }
        Ok(())
    }
);

string_type!(
    /// A public SSM parameter path that holds an AMI id (may be under /aws/service).
    AmiParameter,
    pattern: Some("^(?=.{2,2048}$)(/[A-Za-z0-9_.-]+)+$"),
    example: "/haimg/images/ubuntu-20.04-k8s/latest",
    check: |s| {
        let ok = s.starts_with('/')
            && !s.ends_with('/')
            && !s.contains("//")
            && matches_charset(s, 2, 2048, |c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
        if ok { Ok(()) } else { Err(format!("`{s}` is not an SSM parameter path")) }
    }
);

string_type!(
    /// A KMS key for SecureString parameters: `alias/NAME`, a key id (UUID) or a key/alias ARN.
    KmsKeyId,
    pattern: Some("^(alias/[A-Za-z0-9/_-]{1,250}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|alias/[A-Za-z0-9/_-]{1,250}))$"),
    example: "alias/aws/ssm",
    check: |s| {
        let alias = |a: &str| matches_charset(a, 1, 250, |c| c.is_ascii_alphanumeric() || "/_-".contains(c));
        let uuid = |u: &str| {
            let groups: Vec<&str> = u.split('-').collect();
            groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        };
        let ok = if let Some(a) = s.strip_prefix("alias/") {
            alias(a)
        } else if s.starts_with("arn:") {
            let f: Vec<&str> = s.splitn(6, ':').collect();
            f.len() == 6
                && f[1].strip_prefix("aws").is_some_and(|p| p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
                && f[2] == "kms"
                && !f[3].is_empty()
                && f[3].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && f[4].len() == 12
                && f[4].bytes().all(|b| b.is_ascii_digit())
                && (f[5].strip_prefix("key/").is_some_and(uuid) || f[5].strip_prefix("alias/").is_some_and(alias))
        } else {
            uuid(s)
        };
        if ok { Ok(()) } else { Err(format!("`{s}` is not a KMS key: use alias/NAME, a key id, or a key or alias ARN")) }
    }
);

impl KmsKeyId {
    /// The alias name, if the key is given by alias (`alias/aws/ssm` → `aws/ssm`).
    pub fn alias(&self) -> Option<&str> {
        self.0
            .strip_prefix("alias/")
            .or_else(|| self.0.split_once(":alias/").map(|(_, a)| a))
    }
}

/// An exact Kubernetes version `MAJOR.MINOR.PATCH` (no leading `v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubernetesVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubernetesVersion {
    pub const PATTERN: Option<&'static str> =
        Some("^(0|[1-9][0-9]{0,8})\\.(0|[1-9][0-9]{0,8})\\.(0|[1-9][0-9]{0,8})$");
    /// `1.30` for `1.30.4`: the apt repository channel (pkgs.k8s.io/core:/stable:/v1.30).
    pub fn minor_string(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl TryFrom<&str> for KubernetesVersion {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        let bad = || {
            let hint = if s.starts_with('v') {
                " (drop the leading `v`)"
            } else {
                ""
            };
            format!(
                "`{s}` is not an exact Kubernetes version MAJOR.MINOR.PATCH such as 1.30.4{hint}"
            )
        };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3
            || parts.iter().any(|p| {
                p.is_empty()
                    // Nine digits at most: no version part reaches a billion.
                    || p.len() > 9
                    || !p.bytes().all(|b| b.is_ascii_digit())
                    || (p.len() > 1 && p.starts_with('0'))
            })
        {
            return Err(bad());
        }
        let n = |p: &str| p.parse::<u32>().map_err(|_| bad());
        Ok(Self {
            major: n(parts[0])?,
            minor: n(parts[1])?,
            patch: n(parts[2])?,
        })
    }
}

impl FromStr for KubernetesVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s)
    }
}

impl fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for KubernetesVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KubernetesVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::try_from(s.as_str()).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for KubernetesVersion {
    fn schema_name() -> Cow<'static, str> {
        "KubernetesVersion".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An exact Kubernetes version MAJOR.MINOR.PATCH (kubeadm, kubelet and kubectl are pinned to it). Quote it in YAML if it could read as a number.",
            "pattern": Self::PATTERN,
            "examples": ["1.30.4"],
        })
    }
}

/// An IPv4 or IPv6 network in CIDR notation, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub const PATTERN: Option<&'static str> = None;
    pub fn net(&self) -> IpNet {
        self.0
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl TryFrom<&str> for Cidr {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("`{s}` is not a CIDR (e.g. 192.168.0.0/16)"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set: did you mean {}?",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::try_from(s.as_str()).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A network in CIDR notation with no host bits set.",
            "examples": ["192.168.0.0/16"],
        })
    }
}

/// For a JSON Schema `pattern` failure: the message of the type that owns the pattern.
pub fn explain_pattern(pattern: &str, value: &str) -> Option<String> {
    type Check = fn(&str) -> Option<String>;
    fn check<T: for<'a> TryFrom<&'a str, Error = String>>(v: &str) -> Option<String> {
        T::try_from(v).err()
    }
    let table: &[(Option<&str>, Check)] = &[
        (ClusterName::PATTERN, check::<ClusterName>),
        (PoolName::PATTERN, check::<PoolName>),
        (AmiId::PATTERN, check::<AmiId>),
        (VpcId::PATTERN, check::<VpcId>),
        (SubnetId::PATTERN, check::<SubnetId>),
        (SecurityGroupId::PATTERN, check::<SecurityGroupId>),
        (Region::PATTERN, check::<Region>),
        (InstanceType::PATTERN, check::<InstanceType>),
        (InstanceProfileName::PATTERN, check::<InstanceProfileName>),
        (SsmPath::PATTERN, check::<SsmPath>),
        (AmiParameter::PATTERN, check::<AmiParameter>),
        (KmsKeyId::PATTERN, check::<KmsKeyId>),
        (KubernetesVersion::PATTERN, check::<KubernetesVersion>),
        (NodeName::PATTERN, check::<NodeName>),
        (InterfaceName::PATTERN, check::<InterfaceName>),
        (ImageRef::PATTERN, check::<ImageRef>),
    ];
    table
        .iter()
        .filter(|(p, _)| *p == Some(pattern))
        .find_map(|(_, f)| f(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_bad<T: for<'a> TryFrom<&'a str, Error = String> + fmt::Debug>(
        good: &[&str],
        bad: &[&str],
    ) {
        for g in good {
            assert!(
                T::try_from(g).is_ok(),
                "{g} should be accepted: {:?}",
                T::try_from(g)
            );
        }
        for b in bad {
            assert!(T::try_from(b).is_err(), "{b} should be rejected");
        }
    }

    #[test]
    fn cluster_names() {
        good_bad::<ClusterName>(
            &["demo", "a", "prod-eu-1", "abcdefghij0123456789"],
            &[
                "",
                "Demo",
                "1abc",
                "abcdefghij01234567890",
                "a_b",
                "demo-",
                "a--b",
            ],
        );
    }

    #[test]
    fn pool_names() {
        good_bad::<PoolName>(&["general", "gpu-a10"], &["", "GPU", "-x", "a.b"]);
    }

    #[test]
    fn aws_ids() {
        good_bad::<AmiId>(
            &["ami-0123456789abcdef0", "ami-12345678"],
            &[
                "ami-",
                "ami-123",
                "ami-0123456789ABCDEF0",
                "ami-0123456789abcdef",
                "img-12345678",
            ],
        );
        good_bad::<VpcId>(
            &["vpc-0123456789abcdef0"],
            &["vpc-xyz", "subnet-0123456789abcdef0"],
        );
        good_bad::<SubnetId>(
            &["subnet-0123456789abcdef0", "subnet-aaaaaaaa"],
            &["subnet-aaa"],
        );
        good_bad::<SecurityGroupId>(
            &["sg-0123456789abcdef0"],
            &["sg-1", "vpc-0123456789abcdef0"],
        );
    }

    #[test]
    fn regions() {
        good_bad::<Region>(
            &[
                "us-west-2",
                "eu-central-1",
                "us-gov-west-1",
                "ap-southeast-4",
            ],
            &["us-west", "USWEST2", "us-west-22", "uswest-2", ""],
        );
    }

    #[test]
    fn instance_types_and_profiles() {
        good_bad::<InstanceType>(
            &["t3.large", "m6i.2xlarge", "u-6tb1.metal"],
            &["t3", "T3.large", ".large", "t3."],
        );
        good_bad::<InstanceProfileName>(
            &["demo-master", "a+b=c,d.e@f_g"],
            &["", "has space", "slash/no"],
        );
    }

    #[test]
    fn ssm_paths() {
        good_bad::<SsmPath>(
            &["/haimg/demo", "/a"],
            &[
                "haimg/demo",
                "/haimg/",
                "/a//b",
                "/aws/x",
                "/ssm/x",
                "/SSM/x",
                "/a b",
            ],
        );
        good_bad::<AmiParameter>(&["/aws/service/canonical/ubuntu/server/20.04/stable/current/amd64/hvm/ebs-gp2/ami-id"], &["x"]);
    }

    #[test]
    fn kms_keys() {
        good_bad::<KmsKeyId>(
            &[
                "alias/aws/ssm",
                "1234abcd-12ab-34cd-56ef-1234567890ab",
                "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "arn:aws:kms:us-west-2:111122223333:alias/my-key",
            ],
            &[
                "aws/ssm",
                "alias/",
                "1234",
                "arn:aws:kms:us-west-2:1111:key/x",
            ],
        );
        assert_eq!(
            KmsKeyId::try_from("alias/aws/ssm").unwrap().alias(),
            Some("aws/ssm")
        );
    }

    #[test]
    fn kubernetes_versions() {
        good_bad::<KubernetesVersion>(
            &["1.30.4", "1.31.0"],
            &["1.30", "v1.30.4", "1.30.04", "1.30.4-rc.1", "1..4", ""],
        );
        let v = KubernetesVersion::try_from("1.30.4").unwrap();
        assert_eq!(v.minor_string(), "1.30");
        assert!(KubernetesVersion::try_from("v1.30.4")
            .unwrap_err()
            .contains("leading `v`"));
    }

    #[test]
    fn cidrs() {
        good_bad::<Cidr>(
            &["192.168.0.0/16", "10.96.0.0/12", "fd00::/108"],
            &["192.168.0.0", "10.0.0.0/33", "10.0.0.1/8", "x"],
        );
        let a = Cidr::try_from("10.0.0.0/8").unwrap();
        let b = Cidr::try_from("10.96.0.0/12").unwrap();
        let c = Cidr::try_from("192.168.0.0/16").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(Cidr::try_from("10.0.0.1/8")
            .unwrap_err()
            .contains("did you mean 10.0.0.0/8"));
    }

    #[test]
    fn pattern_explanations_come_from_the_owning_type() {
        let msg = explain_pattern(AmiId::PATTERN.unwrap(), "ami-123").unwrap();
        assert!(msg.contains("not an AMI id"), "{msg}");
        assert!(explain_pattern("^nothing$", "x").is_none());
    }

    #[test]
    fn schema_patterns_agree_with_checks() {
        // The published schema (what editors and `haimg validate`'s first pass use) and the
        // typed checks must accept exactly the same strings: compared on every short
        // string over each type's alphabet, and on long random ones around the limits.
        fn agree<T: for<'a> TryFrom<&'a str, Error = String> + JsonSchema>(
            alphabet: &str,
            exhaustive: usize,
            seeds: &[&str],
            lengths: std::ops::RangeInclusive<usize>,
        ) {
            let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
            let v = jsonschema::validator_for(&schema).unwrap();
            let alphabet: Vec<char> = alphabet.chars().collect();
            let mut corpus: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
            let mut frontier = vec![String::new()];
            for _ in 0..exhaustive {
                frontier = frontier
                    .iter()
                    .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                    .collect();
                corpus.extend(frontier.iter().cloned());
            }
            // Seeded xorshift: the same corpus on every run.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for len in lengths {
                for seed in seeds.iter().chain(std::iter::once(&"")) {
                    for _ in 0..20 {
                        let mut t: String = seed.chars().take(len).collect();
                        while t.chars().count() < len {
                            t.push(alphabet[(next() % alphabet.len() as u64) as usize]);
                        }
                        corpus.push(t.clone());
                        // And one character changed anywhere.
                        if !t.is_empty() {
                            let mut cs: Vec<char> = t.chars().collect();
                            let i = (next() % cs.len() as u64) as usize;
                            cs[i] = alphabet[(next() % alphabet.len() as u64) as usize];
                            corpus.push(cs.into_iter().collect());
                        }
                    }
                }
            }
            for c in corpus {
                let schema_ok = v.is_valid(&serde_json::Value::String(c.clone()));
                let check_ok = T::try_from(c.as_str()).is_ok();
                assert_eq!(
                    schema_ok,
                    check_ok,
                    "{}: `{c}` is {} by the schema and {} by the check",
                    std::any::type_name::<T>(),
                    if schema_ok { "accepted" } else { "refused" },
                    if check_ok { "accepted" } else { "refused" }
                );
            }
        }
        agree::<ClusterName>(
            "az09-A_",
            4,
            &["demo", "demo-", "a--b", "prod-eu-1"],
            18..=22,
        );
        agree::<PoolName>("az09-A_", 4, &["general", "gpu-", "a--b"], 18..=22);
        agree::<NodeName>("az09-A.", 4, &["m1", "-m", "m-"], 61..=65);
        agree::<InterfaceName>("aZ0_.:-/ ", 3, &["eth0", "enp0s3"], 14..=16);
        agree::<ImageRef>(
            "a0.:/@-A_",
            3,
            &["docker.io/library/haproxy:2.8.14", "a@sha256:00", "a:"],
            250..=258,
        );
        agree::<AmiId>(
            "0af-gAi",
            3,
            &[
                "ami-0123456789abcdef0",
                "ami-01234567",
                "ami-0123456789abcdef",
            ],
            11..=22,
        );
        agree::<VpcId>(
            "0af-gAv",
            3,
            &["vpc-0123456789abcdef0", "vpc-01234567"],
            11..=22,
        );
        agree::<SubnetId>(
            "0af-gAs",
            3,
            &["subnet-0123456789abcdef0", "subnet-01234567"],
            14..=25,
        );
        agree::<SecurityGroupId>(
            "0af-gAs",
            3,
            &["sg-0123456789abcdef0", "sg-01234567"],
            10..=21,
        );
        agree::<Region>(
            "agov-19",
            4,
            &[
                "us-west-2",
                "us-gov-west-1",
                "us-isob-east-1",
                "eu-central-1",
                "ap-south-east-x-1",
            ],
            8..=16,
        );
        agree::<InstanceType>(
            "az09.-A",
            4,
            &["t3.large", "m6i.2xlarge", "u-6tb1.metal"],
            30..=68,
        );
        agree::<InstanceProfileName>("aZ0+=,.@_-/ ", 3, &["demo-master"], 126..=130);
        agree::<SsmPath>(
            "/awsmAWSM0_.-",
            4,
            &[
                "/haimg/demo",
                "/aws/x",
                "/ssm",
                "/AwS",
                "/x/aws",
                "/awx",
                "/ss",
            ],
            895..=903,
        );
        agree::<AmiParameter>(
            "/a_.-Z0 ",
            4,
            &["/aws/service/ami", "/haimg/images/x/latest"],
            2045..=2050,
        );
        agree::<KmsKeyId>(
            "aA0f/_-:",
            3,
            &[
                "alias/aws/ssm",
                "alias/",
                "0123abcd-0123-0123-0123-0123456789ab",
                "0123ABCD-0123-0123-0123-0123456789ab",
                "arn:aws:kms:us-west-2:123456789012:key/0123abcd-0123-0123-0123-0123456789ab",
                "arn:aws:kms:us-west-2:123456789012:key/not-a-uuid",
                "arn:aws-cn:kms:cn-north-1:123456789012:alias/x",
                "arn:awsX9:kms:us-west-2:123456789012:alias/x",
                "arn:aws:kms::123456789012:alias/x",
                "arn:aws:kms:US:123456789012:alias/x",
            ],
            240..=258,
        );
        agree::<KubernetesVersion>(
            "0159.v",
            5,
            &[
                "1.30.4",
                "01.30.4",
                "4294967295.0.0",
                "4294967296.0.0",
                "999999999.0.0",
                "1000000000.1.1",
            ],
            12..=16,
        );
    }
}
