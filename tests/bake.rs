//! `haimg bake`: the plan offline, the script through shellcheck, and the whole flow
//! against moto behind a recording, fault-injecting proxy (tests/doubles/awsproxy.py):
//! cache miss and hit (counted RunInstances), tags, parameters, --copy-to, and no builder
//! or staged object left behind after a failed script, a timeout, an API error or Ctrl-C.
//! Results are checked with the AWS CLI, not with haimg's own reads.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fleet::Moto;
use common::proxy::{assert_operator_policy_allows, aws, Proxy};
use common::*;

const REGION: &str = "us-west-2";

fn recipe_text(base: &str) -> String {
    format!(
        r#"apiVersion: haimg.dev/v1alpha1
kind: ImageRecipe
metadata:
  name: test-k8s
spec:
  base:
    {base}
  ubuntu: "20.04"
  architecture: amd64
  kubernetesVersion: 1.30.4
  kubernetesKeyFingerprint: DE15B14486CD377B9E876E1A234654DA9A296436
  aptSnapshot: 20241101T000000Z
  packages:
    containerd: 1.7.12-0ubuntu2~20.04.1
    keepalived: 1:2.0.19-2ubuntu0.2
    haproxy: 2.0.33-0ubuntu0.1
  cni:
    name: calico
    version: v3.28.1
    manifestSha256: 9a0e3e4e4b1c5f0a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819a2b
  extraImages: [docker.io/library/haproxy:2.8.14]
  hardening:
    ssh: disabled
"#
    )
}

/// Writes a recipe with `base` into `dir` and returns its path.
fn write_recipe(dir: &Path, base: &str) -> PathBuf {
    let recipe = dir.join("recipe.yaml");
    std::fs::write(&recipe, recipe_text(base)).unwrap();
    recipe
}

/// A stand-in for the haimg binary the image gets: small, so staging is quick, and a
/// static x86-64 ELF, so bake's check that it can start on the image accepts it.
fn fake_binary(dir: &Path) -> PathBuf {
    let p = dir.join("haimg-for-image");
    std::fs::copy(shared_tool("pause-3.9"), &p).unwrap();
    p
}

/// Replaces what changes between builds (the binary's digest and the hash over it).
fn normalize(text: &str, plan: &serde_json::Value) -> String {
    let hash = plan["recipeHash"].as_str().unwrap();
    let sha = plan["script"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("readonly HAIMG_SHA256='"))
        .unwrap()
        .trim_end_matches('\'')
        .to_string();
    text.replace(hash, "<recipe-hash>")
        .replace(&hash[..12], "<hash12>")
        .replace(&sha, "<haimg-sha256>")
}

#[test]
fn dry_run_with_a_pinned_ami_is_offline_and_matches_its_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), "ami: ami-0123456789abcdef0");
    let bin = fake_binary(dir.path());
    // No credentials, no region, and every endpoint a closed port: any AWS call fails.
    let run_dry = |output: &str| {
        let mut c = haimg();
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["bake", "--dry-run", "--output", output, "--haimg-binary"])
            .arg(&bin)
            .arg(&recipe);
        run(c)
    };
    let json = run_dry("json");
    assert!(json.status.success(), "{}", stderr(&json));
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for k in [
        "recipeHash",
        "baseImage",
        "tags",
        "script",
        "steps",
        "amiName",
    ] {
        assert!(plan.get(k).is_some(), "dry-run JSON has {k}");
    }
    assert_eq!(plan["baseImage"], "ami-0123456789abcdef0");
    assert_eq!(plan["tags"]["haimg:recipe-sha256"], plan["recipeHash"]);
    let text = run_dry("text");
    assert!(text.status.success(), "{}", stderr(&text));
    let out = tempfile::tempdir().unwrap();
    std::fs::write(
        out.path().join("plan.txt"),
        normalize(&stdout(&text), &plan),
    )
    .unwrap();
    std::fs::write(
        out.path().join("provision.sh"),
        normalize(plan["script"].as_str().unwrap(), &plan),
    )
    .unwrap();
    assert_golden("bake-pinned", out.path());
    // Same inputs, same hash; another binary, another hash.
    let again: serde_json::Value = serde_json::from_slice(&run_dry("json").stdout).unwrap();
    assert_eq!(again["recipeHash"], plan["recipeHash"]);
}

fn shellcheck(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("provision.sh");
    std::fs::write(&f, text).unwrap();
    let o = run({
        let mut c = Command::new(require_tool("shellcheck"));
        c.arg(&f);
        c
    });
    assert!(o.status.success(), "shellcheck {what}:\n{}", stdout(&o));
}

#[test]
fn every_recipe_script_is_shellcheck_clean_and_checks_what_it_installs() {
    let t = haimg::render::templates::Templates::embedded();
    let mut recipes: Vec<(String, haimg::recipe::Recipe)> = haimg::recipe::EMBEDDED
        .iter()
        .map(|(n, _)| {
            let sources = kube_artifacts();
            let r = haimg::recipe::load_from(Some(n), Some(&sources));
            (n.to_string(), r.unwrap().recipe)
        })
        .collect();
    recipes.push((
        "test".into(),
        haimg::recipe::load_str(&recipe_text("ami: ami-0123456789abcdef0"), "t")
            .unwrap()
            .recipe,
    ));
    for (name, r) in recipes {
        // The one script, for a chroot (a local image) too: clean, and touching nothing of
        // the machine it runs on.
        let local =
            haimg::bake::script_for(&r, haimg::bake::Platform::Chroot, &"ab".repeat(32), &t)
                .unwrap();
        shellcheck(&local, &format!("{name} (chroot)"));
        for host in [
            "\nsysctl --system",
            "\nswapoff -a",
            "\nmodprobe ",
            "systemctl restart",
            "cloud-init status --wait",
        ] {
            assert!(
                !local.contains(host),
                "{name}: the chroot script runs {host:?}"
            );
        }
        assert!(local.contains("\nstart_containerd\n") && local.contains("\nstop_containerd\n"));
        // The wrapper a plain node's user-data runs: its quoting holds for any value.
        let install = haimg::bake::local::install_script(
            &name,
            &[(
                "HAIMG_DEB_URLS",
                "file:///run/haimg-stage/a'b.deb\nfile:///x y".into(),
            )],
        );
        shellcheck(&install, &format!("{name} (install.sh)"));
        assert!(
            install.contains(
                "export HAIMG_DEB_URLS='file:///run/haimg-stage/a'\\''b.deb\nfile:///x y'\n"
            ),
            "{install}"
        );
        // At a plain node's boot (bake --plain): started by cloud-init, so never waiting on
        // it; never cleaned as an image is; refused where the node would need a reboot.
        match haimg::bake::script_for(&r, haimg::bake::Platform::Boot, &"ab".repeat(32), &t) {
            Ok(boot) => {
                shellcheck(&boot, &format!("{name} (boot)"));
                for never in [
                    "cloud-init status --wait",
                    "cloud-init clean",
                    "machine-id",
                    "\nstart_containerd\n",
                ] {
                    assert!(
                        !boot.contains(never),
                        "{name}: the boot script runs {never:?}"
                    );
                }
                assert!(boot.contains("\nsystemctl restart containerd\n"), "{name}");
                assert!(boot.contains("\n[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter\n"), "{name}");
                assert!(boot.contains("\nstep \"clean up\"\n"), "{name}");
            }
            Err(e) => {
                assert!(r.os.boots_cgroup_v1(), "{name}: {e}");
                assert!(
                    e.to_string().contains("cannot reboot into cgroup v2"),
                    "{e}"
                );
            }
        }
        let s = haimg::bake::script(&r, &"ab".repeat(32), &t).unwrap();
        shellcheck(&s, &name);
        for pin in haimg::bake::pins(&r) {
            assert!(s.contains(&format!("'{pin}'")), "{name}: pins {pin}");
        }
        for needle in [
            "apt_mark hold",
            "apt_quiesce",
            "check_pins_available \"${",
            "systemctl mask keepalived.service haproxy.service",
            "openssh-server unattended-upgrades 2>/dev/null",
            "apt_get purge ${unwanted}",
            "apt_preserve_sources_list: true",
            "rm -f /etc/apt/sources.list.d/kubernetes.list",
            "check image_complete \"${image}\"",
            "SystemdCgroup",
            "sandbox_image",
            "br_netfilter",
            "swapoff -a",
            "cloud-init clean",
            "truncate -s 0 /etc/machine-id",
            "image-manifest.json",
            "step \"verify\"",
            "systemctl mask ssh.service",
            "--platform \"linux/${ARCH}\"",
        ] {
            assert!(s.contains(needle), "{name}: script lacks {needle}");
        }
        // pkgs.k8s.io and its key only without local packages.
        assert_eq!(
            s.contains("KUBERNETES_KEY_FINGERPRINT"),
            r.kubernetes_packages.is_empty(),
            "{name}"
        );
        assert_eq!(
            s.contains("systemd.unified_cgroup_hierarchy=1"),
            r.os == haimg::recipe::Os::Focal,
            "{name}: cgroup v2 on 20.04 only"
        );
        for (unit, _) in haimg::bake::UNITS {
            assert!(s.contains(unit), "{name}: installs {unit}");
        }
    }
    // The checks can fail.
    let r = std::panic::catch_unwind(|| shellcheck("#!/bin/bash\necho $1\n", "bad"));
    assert!(r.is_err());
}

/// The script's Calico patch, run for real on a manifest excerpt in upstream's layout:
/// autodetection follows the node's InternalIP, so it can never pick a VIP.
#[test]
fn the_calico_patch_makes_autodetection_follow_the_node_ip() {
    let r = haimg::recipe::load(None).unwrap().recipe;
    let s = haimg::bake::script(
        &r,
        &"ab".repeat(32),
        &haimg::render::templates::Templates::embedded(),
    )
    .unwrap();
    let start = s.find("python3 - \"${CNI_MANIFEST}\" <<'PY'\n").unwrap();
    let body = &s[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let body = &body[..body.find("\nPY\n").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("patch.py");
    std::fs::write(&patch, body).unwrap();
    let manifest = dir.path().join("calico.yaml");
    let excerpt = "            - name: CLUSTER_TYPE\n              value: \"k8s,bgp\"\n            # Auto-detect the BGP IP address.\n            - name: IP\n              value: \"autodetect\"\n            # Enable IPIP\n            - name: CALICO_IPV4POOL_IPIP\n              value: \"Always\"\n";
    std::fs::write(&manifest, excerpt).unwrap();
    let py = |m: &Path| {
        run({
            let mut c = Command::new("python3");
            c.arg(&patch).arg(m);
            c
        })
    };
    let o = py(&manifest);
    assert!(o.status.success(), "{}", stderr(&o));
    let patched = std::fs::read_to_string(&manifest).unwrap();
    assert!(patched.contains("              value: \"autodetect\"\n            - name: IP_AUTODETECTION_METHOD\n              value: \"kubernetes-internal-ip\"\n            # Enable IPIP"), "{patched}");
    let doc = haimg::yaml::parse(&format!("env:\n{patched}"))
        .unwrap()
        .value;
    assert_eq!(doc["env"].as_array().unwrap().len(), 4);
    // Patching twice, or a manifest without the entry, fails the bake.
    assert!(!py(&manifest).status.success());
    std::fs::write(&manifest, "kind: ConfigMap\n").unwrap();
    assert!(!py(&manifest).status.success());
}

struct Setup {
    moto: Moto,
    proxy: Proxy,
    /// Holds the recipe and the binary for as long as the setup lives.
    #[allow(dead_code)]
    dir: tempfile::TempDir,
    recipe: PathBuf,
    binary: PathBuf,
    base: String,
}

/// moto with a base image published under a parameter (moto has none of the public
/// `/aws/service/...` ones) and the builder's instance profile.
fn setup() -> Setup {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let images = aws(
        &moto,
        REGION,
        &["ec2", "describe-images", "--owners", "amazon"],
    );
    let base = images["Images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["Architecture"] == "x86_64")
        .unwrap()["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    aws(
        &moto,
        REGION,
        &[
            "ssm",
            "put-parameter",
            "--name",
            "/test/ubuntu/20.04/ami-id",
            "--type",
            "String",
            "--value",
            &base,
        ],
    );
    aws(
        &moto,
        REGION,
        &[
            "iam",
            "create-instance-profile",
            "--instance-profile-name",
            "haimg-builder",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), "ssmParameter: /test/ubuntu/20.04/ami-id");
    let binary = fake_binary(dir.path());
    Setup {
        moto,
        proxy,
        dir,
        recipe,
        binary,
        base,
    }
}

impl Setup {
    /// Every call of this setup's bakes is one a cluster's `iam/operator-policy.json` allows.
    fn assert_operator_policy_allows(&self, what: &str) {
        let out = render_all(&repo().join("examples/cluster.yaml"));
        assert_operator_policy_allows(out.path(), &self.proxy.every_call(), what);
    }
    fn bake_cmd(&self, extra: &[&str]) -> Command {
        let mut c = haimg();
        c.env("AWS_ENDPOINT_URL", &self.proxy.url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", REGION)
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(["bake", "--poll", "50ms", "--haimg-binary"])
            .arg(&self.binary)
            .arg(&self.recipe)
            .args(extra);
        c
    }
    fn bake(&self, extra: &[&str]) -> Output {
        run(self.bake_cmd(extra))
    }
    /// No builder that is not terminated, and no staging bucket.
    fn assert_nothing_left(&self, what: &str) {
        let live = aws(
            &self.moto,
            REGION,
            &[
                "ec2",
                "describe-instances",
                "--filters",
                "Name=tag-key,Values=haimg:bake",
                "Name=instance-state-name,Values=pending,running,stopping,stopped",
            ],
        );
        assert!(
            live["Reservations"].as_array().unwrap().is_empty(),
            "{what}: a builder is left: {live}"
        );
        let buckets = aws(&self.moto, REGION, &["s3api", "list-buckets"]);
        let ours: Vec<_> = buckets["Buckets"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter(|b| b["Name"].as_str().unwrap().starts_with("haimg-bake-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(ours.is_empty(), "{what}: staging bucket(s) left: {ours:?}");
    }
    fn builders_ever(&self) -> usize {
        let all = aws(
            &self.moto,
            REGION,
            &[
                "ec2",
                "describe-instances",
                "--filters",
                "Name=tag-key,Values=haimg:bake",
            ],
        );
        all["Reservations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["Instances"].as_array().unwrap().len())
            .sum()
    }
}

#[test]
fn a_bake_against_moto_builds_once_then_hits_the_cache() {
    let s = setup();
    // The script "runs": its output streams back through GetCommandInvocation.
    // The SSM agent is not registered for the first two SendCommands (InvalidInstanceId,
    // as on a booting instance); then the script "runs" and its output streams back.
    s.proxy.set_rules(serde_json::json!([
        {"action": "ssm:SendCommand", "times": 2, "error": {"status": 400, "code": "InvalidInstanceId", "message": "Instances not in a valid state for account"}},
        {"action": "ssm:GetCommandInvocation", "patch": {"Status": "Success", "StandardOutputContent": "==> [1/13] apt sources\n==> [13/13] clean for imaging\nhaimg-provision: OK\n"}}
    ]));
    let o = s.bake(&["--output", "json", "--copy-to", "us-east-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("waiting for the SSM agent"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        s.proxy.calls("SendCommand"),
        3,
        "retried until the agent answered"
    );
    assert!(
        stderr(&o).contains("builder [13/13] clean for imaging"),
        "progress is streamed: {}",
        stderr(&o)
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["cached"], false);
    assert_eq!(out["region"], REGION);
    let image = out["imageId"].as_str().unwrap().to_string();
    let hash = out["recipeHash"].as_str().unwrap().to_string();
    assert_eq!(s.proxy.calls("RunInstances"), 1);

    // The builder: no key pair, IMDSv2 with hop limit 1, tagged; terminated afterwards.
    let inst = aws(
        &s.moto,
        REGION,
        &[
            "ec2",
            "describe-instances",
            "--filters",
            &format!("Name=tag:haimg:bake,Values={hash}"),
        ],
    );
    let i = &inst["Reservations"][0]["Instances"][0];
    assert!(i.get("KeyName").is_none(), "no key pair");
    assert_eq!(i["MetadataOptions"]["HttpTokens"], "required");
    assert_eq!(i["MetadataOptions"]["HttpPutResponseHopLimit"], 1);
    assert_eq!(
        i["ImageId"],
        s.base.as_str(),
        "launched from the base the parameter names"
    );
    assert_eq!(i["State"]["Name"], "terminated");
    s.assert_nothing_left("success");

    // The image and its snapshots carry the hash, versions and recipe.
    let img = aws(
        &s.moto,
        REGION,
        &["ec2", "describe-images", "--image-ids", &image],
    );
    let img = &img["Images"][0];
    assert_eq!(img["Name"], format!("haimg-test-k8s-{}", &hash[..12]));
    let tag = |tags: &serde_json::Value, k: &str| {
        tags.as_array()
            .unwrap()
            .iter()
            .find(|t| t["Key"] == k)
            .map(|t| t["Value"].as_str().unwrap().to_string())
    };
    assert_eq!(
        tag(&img["Tags"], "haimg:recipe-sha256").as_deref(),
        Some(hash.as_str())
    );
    assert_eq!(
        tag(&img["Tags"], "haimg:recipe").as_deref(),
        Some("test-k8s")
    );
    assert_eq!(
        tag(&img["Tags"], "haimg:kubernetes-version").as_deref(),
        Some("1.30.4")
    );
    assert_eq!(
        tag(&img["Tags"], "haimg:pkg/kubeadm").as_deref(),
        Some("1.30.4-1.1")
    );
    assert_eq!(
        tag(&img["Tags"], "haimg:pkg/haproxy").as_deref(),
        Some("2.0.33-0ubuntu0.1")
    );
    let snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .unwrap();
    let snaps = aws(
        &s.moto,
        REGION,
        &["ec2", "describe-snapshots", "--snapshot-ids", snap],
    );
    assert_eq!(
        tag(&snaps["Snapshots"][0]["Tags"], "haimg:recipe-sha256").as_deref(),
        Some(hash.as_str())
    );

    // Parameters, in both regions; the copy is tagged too.
    for (region, id) in [
        (REGION, image.clone()),
        (
            "us-east-1",
            out["copies"]["us-east-1"].as_str().unwrap().to_string(),
        ),
    ] {
        for p in [
            "/haimg/images/test-k8s/latest".to_string(),
            format!("/haimg/images/test-k8s/{hash}"),
        ] {
            let v = aws(&s.moto, region, &["ssm", "get-parameter", "--name", &p]);
            assert_eq!(v["Parameter"]["Value"], id.as_str(), "{region} {p}");
        }
        let img = aws(
            &s.moto,
            region,
            &["ec2", "describe-images", "--image-ids", &id],
        );
        assert_eq!(
            tag(&img["Images"][0]["Tags"], "haimg:recipe-sha256").as_deref(),
            Some(hash.as_str()),
            "{region}"
        );
    }

    // Second run: the same AMI, no instance launched.
    s.proxy.reset_log();
    let t0 = Instant::now();
    let o = s.bake(&[]);
    let took = t0.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), image, "text output is the AMI id");
    assert_eq!(
        s.proxy.calls("RunInstances"),
        0,
        "a cache hit launches nothing"
    );
    let calls = std::fs::read_to_string(&s.proxy.log)
        .unwrap()
        .lines()
        .count();
    eprintln!("cache hit: {calls} API calls, {took:?}");
    assert_eq!(s.builders_ever(), 1);
    assert!(
        stderr(&o).contains("haimg bake: "),
        "progress: {}",
        stderr(&o)
    );
    // --quiet: the same result, no progress lines.
    let o = s.bake(&["--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), image);
    assert_eq!(stderr(&o), "", "--quiet prints no progress");

    // --force rebakes the same hash: a new image (the name is taken, so it gets a suffix),
    // and the parameters move to it.
    s.proxy.reset_log();
    let o = s.bake(&["--force", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let forced: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s.proxy.calls("RunInstances"), 1);
    assert_ne!(forced["imageId"], image.as_str());
    assert!(
        forced["amiName"]
            .as_str()
            .unwrap()
            .starts_with(&format!("haimg-test-k8s-{}-r", &hash[..12])),
        "{forced}"
    );
    let v = aws(
        &s.moto,
        REGION,
        &[
            "ssm",
            "get-parameter",
            "--name",
            "/haimg/images/test-k8s/latest",
        ],
    );
    assert_eq!(v["Parameter"]["Value"], forced["imageId"]);
    s.assert_nothing_left("forced rebake");
    s.assert_operator_policy_allows("bake, its cache hit and a forced rebake");
}

/// The ids of the images this account owns in a region.
fn own_images(s: &Setup, region: &str) -> Vec<String> {
    let images = aws(
        &s.moto,
        region,
        &["ec2", "describe-images", "--owners", "self"],
    );
    images["Images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ImageId"].as_str().unwrap().to_string())
        .collect()
}

/// The image parameters of the test recipe in a region: (name, value).
fn image_parameters(s: &Setup, region: &str) -> Vec<(String, String)> {
    let v = aws(
        &s.moto,
        region,
        &[
            "ssm",
            "get-parameters-by-path",
            "--path",
            "/haimg/images/test-k8s",
        ],
    );
    let mut out: Vec<(String, String)> = v["Parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["Name"].as_str().unwrap().to_string(),
                p["Value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_publish_that_fails_in_the_second_region_moves_no_parameter_and_keeps_pointed_images() {
    let s = setup();
    let success =
        serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "Success"}}]);
    s.proxy.set_rules(success.clone());
    let o = s.bake(&["--output", "json", "--copy-to", "us-east-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = [
        (REGION, image_parameters(&s, REGION)),
        ("us-east-1", image_parameters(&s, "us-east-1")),
    ];
    assert_eq!(before[0].1.len(), 2);

    // A forced rebake whose publication fails in the second region, after the first
    // region's parameters moved.
    let mut rules = success.as_array().unwrap().clone();
    rules.push(
        serde_json::json!({"action": "ssm:PutParameter", "region": "us-east-1",
        "error": {"status": 400, "code": "AccessDeniedException", "message": "injected"}}),
    );
    s.proxy.set_rules(serde_json::Value::Array(rules));
    let o = s.bake(&["--force", "--copy-to", "us-east-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("put /haimg/images/test-k8s/latest back to"),
        "{}",
        stderr(&o)
    );
    for (region, params) in &before {
        assert_eq!(
            &image_parameters(&s, region),
            params,
            "{region}: parameters moved"
        );
        // Every parameter points at an image that exists, and the new images are gone.
        let ids = own_images(&s, region);
        for (name, id) in params {
            assert!(
                ids.contains(id),
                "{region}: {name} points at a deregistered {id}"
            );
        }
        assert_eq!(
            ids.len(),
            1,
            "{region}: the failed bake's image is removed: {ids:?}"
        );
    }
    s.assert_nothing_left("failed publish");

    // The same, and putting the first region's parameters back fails too: the image they
    // now point at is kept, never deregistered under them.
    let mut rules = success.as_array().unwrap().clone();
    rules.push(
        serde_json::json!({"action": "ssm:PutParameter", "region": "us-east-1",
        "error": {"status": 400, "code": "AccessDeniedException", "message": "injected"}}),
    );
    rules.push(
        serde_json::json!({"action": "ssm:PutParameter", "region": REGION, "after": 2,
        "error": {"status": 400, "code": "AccessDeniedException", "message": "injected"}}),
    );
    s.proxy.set_rules(serde_json::Value::Array(rules));
    let o = s.bake(&["--force", "--copy-to", "us-east-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("could not put /haimg/images/test-k8s/latest back"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(&format!("keeping image {REGION}/")),
        "{}",
        stderr(&o)
    );
    let ids = own_images(&s, REGION);
    let params = image_parameters(&s, REGION);
    assert_ne!(params, before[0].1, "the rollback failed, as injected");
    for (name, id) in &params {
        assert!(ids.contains(id), "{name} points at a deregistered {id}");
    }
    s.assert_nothing_left("failed publish and rollback");
    s.assert_operator_policy_allows("bakes with copies, failed publishes and rollbacks");
}

fn assert_failed_cleanly(s: &Setup, o: &Output, what: &str, message: &str) {
    assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(o));
    assert!(stderr(o).contains(message), "{what}: {}", stderr(o));
    assert!(
        stderr(o).contains("terminated builder"),
        "{what}: {}",
        stderr(o)
    );
    assert!(o.stdout.is_empty(), "{what}: no result on stdout");
    s.assert_nothing_left(what);
    // Cleaning up needs nothing the operator's policy does not give.
    s.assert_operator_policy_allows(what);
}

#[test]
fn a_failed_script_leaves_nothing_behind() {
    let s = setup();
    s.proxy.set_rules(serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "Failed", "ResponseCode": 1, "StandardErrorContent": "verify: FAILED: test kubeadm\nhaimg-provision: FAILED: verification failed"}}]));
    let o = s.bake(&[]);
    assert_failed_cleanly(&s, &o, "failed script", "verification failed");
    assert_eq!(s.builders_ever(), 1);
    let images = aws(
        &s.moto,
        REGION,
        &["ec2", "describe-images", "--owners", "self"],
    );
    assert!(
        images["Images"].as_array().unwrap().is_empty(),
        "no image from a failed bake"
    );
}

#[test]
fn a_script_timeout_leaves_nothing_behind() {
    let s = setup();
    s.proxy.set_rules(serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "InProgress"}}]));
    let o = s.bake(&["--timeout", "1s"]);
    assert_failed_cleanly(&s, &o, "timeout", "did not finish within 1s");
    assert!(
        s.proxy.calls("CancelCommand") >= 1,
        "the command is cancelled"
    );
}

#[test]
fn an_api_error_after_launch_leaves_nothing_behind() {
    let s = setup();
    s.proxy.set_rules(serde_json::json!([
        {"action": "ssm:GetCommandInvocation", "patch": {"Status": "Success"}},
        {"action": "ec2:CreateImage", "error": {"status": 400, "code": "InvalidParameterValue", "message": "injected fault"}}
    ]));
    let o = s.bake(&[]);
    assert_failed_cleanly(&s, &o, "API error", "CreateImage");
    assert!(stderr(&o).contains("injected fault"), "{}", stderr(&o));
}

/// Starts a bake whose script never ends, sends `sig` once the script runs, and checks
/// that the bake cleaned up and said why it stopped.
fn interrupt_during_script(sig: &str, name: &str) {
    let s = setup();
    s.proxy.set_rules(serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "InProgress"}}]));
    let mut cmd = s.bake_cmd(&[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.proxy.calls("GetCommandInvocation") == 0 {
        assert!(
            Instant::now() < deadline,
            "the bake never reached the script"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(child.id(), sig);
    let o = child.wait_with_output().unwrap();
    assert_failed_cleanly(&s, &o, name, &format!("interrupted ({name})"));
}

#[test]
fn ctrl_c_leaves_nothing_behind() {
    interrupt_during_script("INT", "Ctrl-C");
}

#[test]
fn ctrl_c_while_run_instances_is_in_flight_still_terminates_the_builder() {
    let s = setup();
    // moto launches the instance at once; its answer is held back, so haimg never learns
    // the id before the interrupt. Cleanup finds the builder by its run tag.
    s.proxy
        .set_rules(serde_json::json!([{"action": "ec2:RunInstances", "delay": 30}]));
    let mut cmd = s.bake_cmd(&[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.proxy.calls("RunInstances") == 0 {
        assert!(Instant::now() < deadline, "the bake never launched");
        std::thread::sleep(Duration::from_millis(50));
    }
    let live = || {
        let v = aws(
            &s.moto,
            REGION,
            &[
                "ec2",
                "describe-instances",
                "--filters",
                "Name=tag-key,Values=haimg:bake-run",
                "Name=instance-state-name,Values=pending,running",
            ],
        );
        v["Reservations"].as_array().unwrap().len()
    };
    while live() == 0 {
        assert!(Instant::now() < deadline, "moto never launched the builder");
        std::thread::sleep(Duration::from_millis(50));
    }
    send_sigint(child.id());
    let o = child.wait_with_output().unwrap();
    assert_failed_cleanly(&s, &o, "Ctrl-C during RunInstances", "interrupted");
}

fn send_sigint(pid: u32) {
    send_signal(pid, "INT");
}

fn send_signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn sigterm_and_sighup_clean_up_like_ctrl_c() {
    // systemd, CI runners and Kubernetes Jobs stop with SIGTERM; a closed terminal sends
    // SIGHUP. Either used to kill the bake outright, leaving the builder and the bucket.
    interrupt_during_script("TERM", "SIGTERM");
    interrupt_during_script("HUP", "SIGHUP");
}

/// The agent `scripts/build-agent.sh` builds for images (dev profile: faster), once per
/// test run; `scripts/test.sh` builds it first and passes it in `HAIMG_TEST_AGENT`.
fn image_agent() -> PathBuf {
    static AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("HAIMG_TEST_AGENT") {
                return PathBuf::from(p);
            }
            let o = run({
                let mut c = std::process::Command::new(repo().join("scripts/build-agent.sh"));
                c.env("HAIMG_AGENT_PROFILE", "dev");
                c
            });
            assert!(o.status.success(), "scripts/build-agent.sh: {}", stderr(&o));
            PathBuf::from(stdout(&o).trim())
        })
        .clone()
}

#[test]
fn the_agent_built_for_images_starts_on_ubuntu_20_04s_glibc() {
    let agent = image_agent();
    let found = haimg::bake::binary::inspect(&std::fs::read(&agent).unwrap()).unwrap();
    assert_eq!(found.arch, Some(haimg::recipe::Arch::Amd64));
    let (newest, name) = found.newest_glibc.expect("a glibc-linked agent");
    assert!(newest <= (2, 31), "{} needs {name}", agent.display());
    // It runs, and bake takes it without a word.
    let o = run({
        let mut c = std::process::Command::new(&agent);
        c.arg("--version");
        c
    });
    assert_eq!(stdout(&o), format!("haimg {}\n", env!("CARGO_PKG_VERSION")));
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), "ami: ami-0123456789abcdef0");
    let o = run({
        let mut c = haimg();
        c.args(["bake", "--dry-run", "--haimg-binary"])
            .arg(&agent)
            .arg(&recipe);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn a_binary_that_cannot_start_on_the_image_is_refused_before_any_aws_call() {
    // Every AWS endpoint is this listener: a connection to it would be an AWS call.
    let aws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    aws.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", aws.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), "ssmParameter: /test/ubuntu/20.04/ami-id");
    let script = dir.path().join("haimg.sh");
    std::fs::write(&script, "#!/bin/sh\necho haimg\n").unwrap();
    // The haimg under test, built on this machine's newer glibc.
    let host = PathBuf::from(env!("CARGO_BIN_EXE_haimg"));
    let host_glibc = haimg::bake::binary::inspect(&std::fs::read(&host).unwrap())
        .unwrap()
        .newest_glibc
        .unwrap();
    assert!(
        host_glibc.0 > (2, 31),
        "this test needs a build machine newer than glibc 2.31"
    );
    for (binary, want) in [
        (
            host.clone(),
            format!(
                "it needs symbol version {}, but Ubuntu 20.04 has glibc 2.31",
                host_glibc.1
            ),
        ),
        (script.clone(), "not an executable".to_string()),
    ] {
        let o = run({
            let mut c = haimg();
            c.env("AWS_ENDPOINT_URL", &endpoint)
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_REGION", REGION)
                .args(["bake", "--haimg-binary"])
                .arg(&binary)
                .arg(&recipe);
            c
        });
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&want), "{err}");
        assert!(
            err.contains("scripts/build-agent.sh"),
            "the error says how to build the right one: {err}"
        );
        assert!(
            matches!(aws.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "no AWS call was made"
        );
    }
    // The running haimg is the default binary: refused the same way.
    let o = run({
        let mut c = haimg();
        c.env("AWS_ENDPOINT_URL", &endpoint)
            .args(["bake"])
            .arg(&recipe);
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("the running haimg"), "{}", stderr(&o));
    assert!(matches!(aws.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

/// The `HAIMG_LOG_URL` the bake gave the builder, from the command moto recorded.
fn log_url_of_sent_command(s: &Setup) -> Option<String> {
    export_of_sent_command(s, "HAIMG_LOG_URL")
}

/// A variable the sent command exports (`export NAME='value'`).
fn export_of_sent_command(s: &Setup, name: &str) -> Option<String> {
    let cmds = aws(&s.moto, REGION, &["ssm", "list-commands"]);
    let lines = cmds["Commands"].as_array()?.first()?["Parameters"]["commands"].clone();
    let prefix = format!("export {name}='");
    lines.as_array()?.iter().find_map(|l| {
        l.as_str()?
            .strip_prefix(&prefix)
            .map(|u| u.trim_end_matches('\'').to_string())
    })
}

/// What the builder's `upload_log` does: PUT the whole log to the presigned URL.
fn upload_log(url: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("log");
    std::fs::write(&f, text).unwrap();
    let o = run({
        let mut c = std::process::Command::new(require_tool("curl"));
        c.args([
            "-fsS",
            "-X",
            "PUT",
            "-H",
            "Content-Type: text/plain",
            "--upload-file",
        ])
        .arg(&f)
        .arg(url);
        c
    });
    assert!(
        o.status.success(),
        "PUT to the presigned URL: {}",
        stderr(&o)
    );
}

#[test]
fn a_failed_bake_shows_steps_as_they_run_and_the_whole_end_of_the_log() {
    use std::io::Read;
    let s = setup();
    // The script runs until the test, playing the builder, has uploaded its log.
    s.proxy.set_rules(serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "InProgress"}}]));
    let mut child = s
        .bake_cmd(&[])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let mut seen = String::new();
    let wait_for = |what: &str, seen: &mut String| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.push_str(&chunk),
                Err(_) => panic!("waited for {what:?}; stderr so far:\n{seen}"),
            }
        }
    };
    wait_for(" sent to ", &mut seen);
    let url = log_url_of_sent_command(&s).expect("the command carries HAIMG_LOG_URL");
    // First upload: two steps done. haimg shows them while the script still runs.
    let mut log = String::from("==> [1/12] apt sources\nHit:1 http://archive.ubuntu.com focal InRelease\n==> [2/12] kubernetes apt repository v1.30\n");
    upload_log(&url, &log);
    wait_for("builder [2/12] kubernetes apt repository", &mut seen);
    // Then far more than SSM would keep, and the failure at the very end.
    log.push_str("==> [3/12] pinned packages\n");
    for i in 0..3000 {
        log.push_str(&format!(
            "Get:{i} https://snapshot.ubuntu.com/ubuntu focal/main amd64 package {i}\n"
        ));
    }
    // A download of the staged binary that failed, traced (`set -x`) and complained about
    // with its URL: the presigned URL must not reach the terminal.
    let binary_url = export_of_sent_command(&s, "HAIMG_BINARY_URL").unwrap();
    assert!(binary_url.contains("X-Amz-Signature="), "{binary_url}");
    log.push_str(&format!(
        "+ curl -fsSL {binary_url} -o /usr/local/bin/haimg.download\ncurl: (22) The requested URL returned error: 403 ({binary_url})\n"
    ));
    log.push_str("haimg-provision: keepalived 1:2.0.19-2ubuntu0.3 is not available from the configured sources (available: 1:2.0.19-2ubuntu0.2; apt snapshot: 20241101T000000Z)\n");
    log.push_str(
        "haimg-provision: FAILED: pinned package versions are missing from the apt sources\n",
    );
    assert!(log.len() > 24_000);
    upload_log(&url, &log);
    s.proxy.set_rules(serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "Failed", "ResponseCode": 1, "StandardErrorContent": "(SSM's copy, truncated)"}}]));
    let status = wait_child(&mut child, Duration::from_secs(120)).expect("bake ends");
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push_str(&chunk);
    }
    assert_eq!(status.code(), Some(1), "{seen}");
    let progress_at = seen.find("builder [2/12]").unwrap();
    let failed_at = seen.find("ended Failed").expect("the failure is reported");
    assert!(
        progress_at < failed_at,
        "progress came before the end:\n{seen}"
    );
    assert!(seen.contains("in step [3/12] pinned packages"), "{seen}");
    assert!(
        seen.contains("keepalived 1:2.0.19-2ubuntu0.3 is not available"),
        "{seen}"
    );
    assert!(
        seen.contains("FAILED: pinned package versions are missing"),
        "{seen}"
    );
    assert!(
        !seen.contains("(SSM's copy, truncated)"),
        "the log, not SSM's copy: {seen}"
    );
    assert!(
        !seen.contains("X-Amz-Signature") && !seen.contains(&url) && !seen.contains(&binary_url),
        "no presigned URL is printed: {seen}"
    );
    assert!(
        seen.contains("+ curl -fsSL <presigned URL> -o /usr/local/bin/haimg.download"),
        "the failing download is shown, its URL redacted: {seen}"
    );
    assert!(seen.contains("terminated builder"), "{seen}");
    s.assert_nothing_left("failed script with a log");
}

fn wait_child(
    child: &mut std::process::Child,
    bound: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn image_archives_packages_the_cni_manifest_and_the_mirror_key_are_staged_for_the_builder_and_removed_after(
) {
    let s = setup();
    let archive = s.dir.path().join("pause.tar");
    std::fs::write(&archive, b"an OCI archive, as far as staging is concerned").unwrap();
    let sha = sha256_file(&archive);
    // And an apt mirror's key.
    let key = s.dir.path().join("mirror.asc");
    std::fs::write(&key, "-----BEGIN PGP PUBLIC KEY BLOCK-----\ntest\n").unwrap();
    let key_sha = sha256_file(&key);
    // And the Kubernetes packages as files (what a mirror of pkgs.k8s.io would hold).
    let mut debs = String::from("  kubernetesPackages:\n");
    for p in ["kubeadm", "kubelet", "kubectl"] {
        let f = s.dir.path().join(format!("{p}_1.30.4-1.1_amd64.deb"));
        std::fs::write(&f, format!("{p} package")).unwrap();
        let sha = sha256_file(&f);
        debs.push_str(&format!(
            "    - {{file: {p}_1.30.4-1.1_amd64.deb, sha256: {sha}}}\n"
        ));
    }
    // And the pod network's manifest as a local file (kindnet has no download).
    let manifest = s.dir.path().join("kindnet.yaml");
    std::fs::write(&manifest, "apiVersion: apps/v1\nkind: DaemonSet\n").unwrap();
    let manifest_sha = sha256_file(&manifest);
    let calico = "  cni:\n    name: calico\n    version: v3.28.1\n    manifestSha256: 9a0e3e4e4b1c5f0a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819a2b\n";
    let kindnet = format!("  cni:\n    name: kindnet\n    version: v20240513-cd2ac642\n    manifest: kindnet.yaml\n    manifestSha256: {manifest_sha}\n");
    let text = recipe_text("ssmParameter: /test/ubuntu/20.04/ami-id")
        .replace("  aptSnapshot: 20241101T000000Z\n", "");
    assert!(text.contains(calico));
    std::fs::write(
        &s.recipe,
        format!(
            "{}  images:\n    - {{name: registry.k8s.io/pause:3.9, archive: pause.tar, sha256: {sha}}}\n{debs}  aptMirror: {{url: https://mirror.internal.example/ubuntu, key: mirror.asc, sha256: {key_sha}}}\n",
            text.replace(calico, &kindnet)
        ),
    )
    .unwrap();
    s.proxy.set_rules(serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "InProgress"}}]));
    let mut child = s
        .bake_cmd(&[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The command carries one presigned URL per archive; the builder fetches the bytes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let urls = loop {
        if let Some(u) = export_of_sent_command(&s, "HAIMG_IMAGE_ARCHIVE_URLS") {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "no command was sent");
        std::thread::sleep(Duration::from_millis(50));
    };
    let urls: Vec<&str> = urls.lines().collect();
    assert_eq!(urls.len(), 1, "{urls:?}");
    assert!(urls[0].contains("X-Amz-Signature="));
    let got = run({
        let mut c = std::process::Command::new(require_tool("curl"));
        c.args(["-fsS", urls[0]]);
        c
    });
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(
        got.stdout,
        std::fs::read(&archive).unwrap(),
        "the staged bytes"
    );
    let key_url = export_of_sent_command(&s, "HAIMG_APT_KEY_URL").expect("the key is staged");
    let got = run({
        let mut c = std::process::Command::new(require_tool("curl"));
        c.args(["-fsS", &key_url]);
        c
    });
    assert_eq!(got.stdout, std::fs::read(&key).unwrap(), "the staged key");
    let debs = export_of_sent_command(&s, "HAIMG_DEB_URLS").expect("the packages are staged");
    let debs: Vec<&str> = debs.lines().collect();
    assert_eq!(debs.len(), 3, "{debs:?}");
    for (url, p) in debs.iter().zip(["kubeadm", "kubelet", "kubectl"]) {
        let got = run({
            let mut c = std::process::Command::new(require_tool("curl"));
            c.args(["-fsS", url]);
            c
        });
        assert_eq!(String::from_utf8_lossy(&got.stdout), format!("{p} package"));
    }
    let cni_url =
        export_of_sent_command(&s, "HAIMG_CNI_MANIFEST_URL").expect("the CNI manifest is staged");
    assert!(cni_url.contains("X-Amz-Signature="), "{cni_url}");
    let got = run({
        let mut c = std::process::Command::new(require_tool("curl"));
        c.args(["-fsS", &cni_url]);
        c
    });
    assert_eq!(
        got.stdout,
        std::fs::read(&manifest).unwrap(),
        "the staged manifest"
    );
    s.proxy.set_rules(
        serde_json::json!([{"action": "ssm:GetCommandInvocation", "patch": {"Status": "Success"}}]),
    );
    let status = wait_child(&mut child, Duration::from_secs(120)).expect("bake ends");
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("X-Amz-Signature"),
        "no URL printed"
    );
    s.assert_nothing_left("a bake with image archives");

    // A bake that fails after staging them leaves none of them either.
    s.proxy.set_rules(serde_json::json!([
        {"action": "ssm:GetCommandInvocation", "patch": {"Status": "Success"}},
        {"action": "ec2:CreateImage", "error": {"status": 400, "code": "InvalidParameterValue", "message": "injected fault"}}
    ]));
    let o = s.bake(&["--force"]);
    assert_failed_cleanly(&s, &o, "a failed bake with staged files", "injected fault");
}
