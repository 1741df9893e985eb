//! Every lab-only change inside a node, in one place (pure). They go into the node's
//! copy-on-write layer, never into the image or the user-data, and each says why the lab
//! needs it: these nodes are system containers on a kernel they share with this machine.

use crate::error::{Error, Result};

/// A file the lab writes into a node's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropIn {
    pub path: &'static str,
    pub contents: String,
}

pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The marker the agent's preflight accepts a cgroup v1 hierarchy by (bound read-only at
/// `/run/haimg-lab`, outside the root).
pub const MARKER_NAME: &str = "system-container";
pub const MARKER_TEXT: &str = "haimg lab: a system container on a shared kernel that mounts cgroup v1; the lab's boot tier proves cgroup v2\n";

const CGROUPS_UNIT: &str = "/etc/systemd/system/haimg-lab-cgroups.service";
const CGROUPS_WANT: &str = "/etc/systemd/system/sysinit.target.wants/haimg-lab-cgroups.service";

const OOM_FROM: &str = "restrict_oom_score_adj = false";
const OOM_TO: &str = "restrict_oom_score_adj = true";
const PLAIN_OOM_DROP_IN: &str = "/etc/systemd/system/containerd.service.d/haimg-lab.conf";
const PLAIN_OOM_SCRIPT: &str = "/etc/haimg-lab/containerd-oom.sh";

/// The drop-ins for a node whose image has `containerd_config` at [`CONTAINERD_CONFIG`],
/// or none yet (a plain base, whose install writes it at boot: see [`super::plain`]).
pub fn drop_ins(containerd_config: Option<&str>) -> Result<Vec<DropIn>> {
    // This machine's root lacks CAP_SYS_RESOURCE: runc cannot raise a pod sandbox's
    // oom_score_adj, and every sandbox fails ("can't get final child's PID from pipe")
    // unless containerd keeps the scores at or above its own.
    let containerd = match containerd_config {
        Some(conf) => {
            if conf.matches(OOM_FROM).count() != 1 {
                return Err(Error::Runtime(format!(
                    "lab: the image's {CONTAINERD_CONFIG} has no single `{OOM_FROM}` line to turn on"
                )));
            }
            vec![DropIn {
                path: CONTAINERD_CONFIG,
                contents: conf.replace(OOM_FROM, OOM_TO),
            }]
        }
        // The same change, made each time containerd starts, on the config the install
        // wrote (the node's own first start, before the install writes one, has none).
        None => vec![
            DropIn {
                path: PLAIN_OOM_SCRIPT,
                contents: format!(
                    "# haimg lab: containerd keeps pods' OOM scores at or above its own (see src/lab/dropins.rs).\n\
                     f={CONTAINERD_CONFIG}\n[ ! -f \"$f\" ] || sed -i 's/{OOM_FROM}/{OOM_TO}/' \"$f\"\n"
                ),
            },
            DropIn {
                path: PLAIN_OOM_DROP_IN,
                contents: format!(
                    "# haimg lab: see src/lab/dropins.rs.\n[Service]\nExecStartPre=/bin/sh {PLAIN_OOM_SCRIPT}\n"
                ),
            },
        ],
    };
    // systemd-nspawn mounts the cgroup v1 controllers read-only; the kubelet and runc
    // create cgroups in them. Remounted writable before anything else starts.
    let unit = "\
[Unit]
Description=haimg lab: cgroup v1 controllers writable (systemd-nspawn mounts them read-only)
DefaultDependencies=no
Before=sysinit.target containerd.service kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*/; do case \"$c\" in */unified/|*/systemd/) continue ;; esac; mount -o remount,bind,rw \"$c\"; done'
"
    .to_string();
    Ok(containerd
        .into_iter()
        .chain([
            DropIn {
                path: CGROUPS_UNIT,
                contents: unit,
            },
            DropIn {
                path: CGROUPS_WANT,
                contents: String::new(),
            },
        ])
        .collect())
}

/// Where the nodes' AWS calls go in the lab (nowhere else answers: the lab has no route out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsEndpoints {
    /// Parameter Store (moto in the lab's namespace); `None` with static credentials.
    pub ssm: Option<String>,
    /// The lab's own Auto Scaling ([`super::asg`]).
    pub autoscaling: String,
}

const AWS_DROP_IN: &str = "haimg-lab-aws.conf";

/// The lab's cloud-init part of its own (NoCloud `vendor-data`; haimg's user-data stays as
/// rendered): on every boot, before cloud-init's final stage starts (it runs
/// `haimg node bootstrap`), a runtime drop-in points the agent's SDK at the lab's AWS
/// through its standard per-service variables. Credentials come as on EC2, from the
/// instance profile the metadata stand-in serves. `bootcmd`, because cloud-init lets
/// user-data override vendor-data key by key and haimg's user-data sets `write_files` and
/// `runcmd`, never `bootcmd` ([`check_vendor_keys`]).
pub fn vendor_data(e: &AwsEndpoints) -> String {
    let mut conf = vec![
        "[Service]".to_string(),
        format!(
            "Environment=AWS_ENDPOINT_URL_AUTO_SCALING={}",
            e.autoscaling
        ),
    ];
    if let Some(ssm) = &e.ssm {
        conf.push(format!("Environment=AWS_ENDPOINT_URL_SSM={ssm}"));
    }
    let lines: Vec<String> = conf.iter().map(|l| format!("'{l}'")).collect();
    let script = format!(
        "set -e; for u in cloud-final.service haimg-.service; do d=/run/systemd/system/$u.d; \
         mkdir -p $d; printf '%s\\n' {} >$d/{AWS_DROP_IN}; done; systemctl daemon-reload",
        lines.join(" ")
    );
    format!(
        "#cloud-config\n# haimg lab: the nodes' AWS is the lab's (see src/lab/dropins.rs).\nbootcmd:\n  - {}\n",
        serde_json::to_string(&["sh", "-c", script.as_str()]).expect("plain data")
    )
}

/// Vendor-data keys must not be in the user-data, which would override them.
pub fn check_vendor_keys(user_data: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(user_data);
    if text.lines().any(|l| l.starts_with("bootcmd:")) {
        return Err(Error::Runtime(
            "lab: the rendered user-data sets `bootcmd`, which would override the lab's vendor-data".into(),
        ));
    }
    Ok(())
}

/// Whether a drop-in is the symlink that enables a unit (written as a link, not a file).
pub fn is_link(d: &DropIn) -> bool {
    d.path == CGROUPS_WANT
}

pub fn link_target() -> &'static str {
    "../haimg-lab-cgroups.service"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_keeps_its_config_but_for_the_oom_score_restriction() {
        let conf = "version = 2\n[plugins]\n  restrict_oom_score_adj = false\n  x = 1\n";
        let d = drop_ins(Some(conf)).unwrap();
        assert_eq!(d[0].contents, conf.replace("= false", "= true"));
        assert!(d[1].contents.contains("mount -o remount,bind,rw"));
        assert!(is_link(&d[2]));
        let e = drop_ins(Some("version = 2\n")).unwrap_err().to_string();
        assert!(e.contains("restrict_oom_score_adj"), "{e}");
    }

    #[test]
    fn a_plain_node_turns_the_restriction_on_each_time_containerd_starts() {
        let d = drop_ins(None).unwrap();
        assert_eq!(d[1].path, PLAIN_OOM_DROP_IN);
        assert!(d[1]
            .contents
            .contains(&format!("ExecStartPre=/bin/sh {PLAIN_OOM_SCRIPT}")));
        assert!(d[2].contents.contains("mount -o remount,bind,rw"));
        // The script itself, run on a config as the install writes it, and on none.
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("config.toml");
        let script = d[0]
            .contents
            .replace(CONTAINERD_CONFIG, conf.to_str().unwrap());
        let run = || {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        run();
        assert!(!conf.exists());
        std::fs::write(
            &conf,
            "[plugins]\n  restrict_oom_score_adj = false\n  x = 1\n",
        )
        .unwrap();
        run();
        run();
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "[plugins]\n  restrict_oom_score_adj = true\n  x = 1\n"
        );
    }

    #[test]
    fn vendor_data_points_the_agent_at_the_labs_aws_and_nothing_else() {
        let e = AwsEndpoints {
            ssm: Some("http://10.0.0.1:5000".into()),
            autoscaling: "http://10.0.0.1:8080".into(),
        };
        let v = vendor_data(&e);
        assert!(v.starts_with("#cloud-config\n"));
        assert!(
            v.contains("AWS_ENDPOINT_URL_SSM=http://10.0.0.1:5000"),
            "{v}"
        );
        assert!(v.contains("AWS_ENDPOINT_URL_AUTO_SCALING=http://10.0.0.1:8080"));
        assert!(
            !v.contains("AWS_ACCESS_KEY") && !v.contains("AWS_SECRET"),
            "credentials come from IMDS"
        );
        let stat = vendor_data(&AwsEndpoints { ssm: None, ..e });
        assert!(!stat.contains("SSM"), "{stat}");
        assert!(check_vendor_keys(b"#cloud-config\nruncmd: []\n").is_ok());
        assert!(check_vendor_keys(b"#cloud-config\nbootcmd: []\n").is_err());
    }
}
