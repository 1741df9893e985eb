//! What the cluster should be: the JSON files of `haimg render --all`, read back into
//! the types `render` wrote them from ([`crate::contract::artifacts`]).
//!
//! `up` applies exactly the rendered files (one source of truth). Each file is parsed
//! with `deny_unknown_fields`, so a file that gains a field `up` does not apply fails
//! here, loudly, instead of being silently dropped.

use crate::error::{Error, Result};
use crate::render::Artifact;

pub use crate::contract::artifacts::*;

/// The API endpoint's load balancer (NLB mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    pub load_balancer: LoadBalancer,
    pub target_group: TargetGroup,
    pub attributes: TargetGroupAttributes,
    pub listener: Listener,
}

/// One Auto Scaling group and the launch template it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub launch_template: LaunchTemplate,
    pub asg: AutoScalingGroup,
}

/// Where the launch templates' image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Ami(String),
    /// `resolve:ssm:<parameter>` in the rendered files: `up` reads the parameter, so a new
    /// bake rolls out as a new launch template version when `up` runs.
    Parameter(String),
}

/// The whole desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub cluster: String,
    pub api: Option<Api>,
    /// In apply order: the control plane first.
    pub groups: Vec<Group>,
    pub image: Image,
    /// The SSM prefix, when join material lives in SSM (not with static credentials).
    pub ssm_prefix: Option<String>,
    /// Whether the control plane runs in an Auto Scaling group (NLB mode); with fixed
    /// masters (VIP, external) `up` manages the worker pools only.
    pub masters_in_asg: bool,
}

const RESOLVE_SSM: &str = "resolve:ssm:";

fn parse<T: serde::de::DeserializeOwned>(a: &Artifact) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(&a.contents);
    serde_path_to_error::deserialize(de).map_err(|e| Error::Template {
        name: a.path.clone(),
        message: format!(
            "`haimg up` cannot apply {}: {}",
            if e.path().to_string() == "." {
                String::new()
            } else {
                e.path().to_string()
            },
            e.inner()
        ),
    })
}

impl Desired {
    /// Reads the rendered tree (`render::render(spec, Selection::All, …)`).
    pub fn from_artifacts(
        cluster: &str,
        ssm_prefix: Option<&str>,
        artifacts: &[Artifact],
    ) -> Result<Desired> {
        let find = |path: &str| artifacts.iter().find(|a| a.path == path);
        let api = match find("load-balancer/load-balancer.json") {
            None => None,
            Some(lb) => {
                let need = |p: &str| {
                    find(p).ok_or_else(|| Error::Template {
                        name: p.into(),
                        message: "missing from the rendered tree".into(),
                    })
                };
                Some(Api {
                    load_balancer: parse(lb)?,
                    target_group: parse(need("load-balancer/target-group.json")?)?,
                    attributes: parse(need("load-balancer/target-group-attributes.json")?)?,
                    listener: parse(need("load-balancer/listener.json")?)?,
                })
            }
        };
        let mut groups = Vec::new();
        for a in artifacts
            .iter()
            .filter(|a| a.path.starts_with("autoscaling/"))
        {
            let asg: AutoScalingGroup = parse(a)?;
            let lt_path = a.path.replacen("autoscaling/", "launch-templates/", 1);
            let lt_artifact = find(&lt_path).ok_or_else(|| Error::Template {
                name: lt_path.clone(),
                message: format!("{} has no launch template", a.path),
            })?;
            let launch_template: LaunchTemplate = parse(lt_artifact)?;
            if launch_template.launch_template_name != asg.launch_template.launch_template_name {
                return Err(Error::Template {
                    name: a.path.clone(),
                    message: format!(
                        "runs launch template {}, but {lt_path} is {}",
                        asg.launch_template.launch_template_name,
                        launch_template.launch_template_name
                    ),
                });
            }
            groups.push(Group {
                launch_template,
                asg,
            });
        }
        groups.sort_by_key(|g| !g.asg.is_master());
        let masters_in_asg = groups.iter().any(|g| g.asg.is_master());
        let images: Vec<&str> = groups
            .iter()
            .map(|g| g.launch_template.launch_template_data.image_id.as_str())
            .collect();
        let image = match images.first() {
            None => Image::Ami(String::new()),
            Some(first) => {
                if images.iter().any(|i| i != first) {
                    return Err(Error::Template {
                        name: "launch-templates/".into(),
                        message: "launch templates disagree on the image".into(),
                    });
                }
                match first.strip_prefix(RESOLVE_SSM) {
                    Some(p) => Image::Parameter(p.to_string()),
                    None => Image::Ami(first.to_string()),
                }
            }
        };
        Ok(Desired {
            cluster: cluster.to_string(),
            api,
            groups,
            image,
            ssm_prefix: ssm_prefix.map(str::to_string),
            masters_in_asg,
        })
    }

    /// The launch templates with the image resolved to an AMI id.
    pub fn with_image(mut self, ami: &str) -> Desired {
        for g in &mut self.groups {
            g.launch_template.launch_template_data.image_id = ami.to_string();
        }
        self
    }
}

/// Whether `actual` carries every tag of `desired` with the same value; extra tags (added
/// by people or by AWS) are left alone. Returns the missing or different ones.
pub fn missing_tags(desired: &[Tag], actual: &[Tag]) -> Vec<Tag> {
    desired
        .iter()
        .filter(|d| !actual.iter().any(|a| a.key == d.key && a.value == d.value))
        .cloned()
        .collect()
}

/// Whether the tags mark a resource as this cluster's.
pub fn owned_by(tags: &[Tag], cluster: &str) -> bool {
    tags.iter()
        .any(|t| t.key == CLUSTER_TAG && t.value == cluster)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, templates::Templates, Selection};

    fn example() -> Desired {
        let spec = crate::spec::load_str(crate::spec::EXAMPLE, "example")
            .unwrap()
            .spec;
        let arts = render(&spec, Selection::All, &Templates::embedded()).unwrap();
        Desired::from_artifacts("demo", Some("/haimg/demo"), &arts).unwrap()
    }

    #[test]
    fn reads_the_example_tree() {
        let d = example();
        let api = d.api.as_ref().unwrap();
        assert_eq!(api.load_balancer.r#type, "network");
        assert_eq!(api.listener.port, 6443);
        assert_eq!(api.target_group.protocol, "TCP");
        assert!(api.attributes.attributes.contains(&Attribute {
            key: "preserve_client_ip.enabled".into(),
            value: "false".into()
        }));
        assert_eq!(d.groups.len(), 2);
        assert!(d.groups[0].asg.is_master());
        assert!(!d.groups[1].asg.is_master());
        assert!(d.masters_in_asg);
        assert!(matches!(d.image, Image::Parameter(ref p) if p.starts_with("/haimg/images/")));
        let lt = &d.groups[0].launch_template;
        assert_eq!(
            lt.launch_template_data.metadata_options.http_tokens,
            "required"
        );
        assert!(owned_by(&lt.tags(), "demo"));
    }

    #[test]
    fn a_field_up_does_not_know_fails_loudly() {
        let spec = crate::spec::load_str(crate::spec::EXAMPLE, "example")
            .unwrap()
            .spec;
        let mut arts = render(&spec, Selection::All, &Templates::embedded()).unwrap();
        let lt = arts
            .iter_mut()
            .find(|a| a.path == "launch-templates/master.json")
            .unwrap();
        lt.contents = lt.contents.replacen(
            "\"InstanceType\"",
            "\"KeyName\": \"x\",\n    \"InstanceType\"",
            1,
        );
        let e = Desired::from_artifacts("demo", None, &arts).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("launch-templates/master.json"), "{msg}");
        assert!(msg.contains("LaunchTemplateData"), "{msg}");
        assert!(msg.contains("KeyName"), "{msg}");
    }

    #[test]
    fn missing_tags_ignores_extra_ones() {
        let t = |k: &str, v: &str| Tag {
            key: k.into(),
            value: v.into(),
        };
        let want = [t("a", "1"), t("b", "2")];
        assert!(missing_tags(&want, &[t("b", "2"), t("a", "1"), t("c", "3")]).is_empty());
        assert_eq!(
            missing_tags(&want, &[t("a", "1"), t("b", "x")]),
            vec![t("b", "2")]
        );
    }
}
