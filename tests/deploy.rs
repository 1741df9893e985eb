//! `haimg up`, `status`, `down` against moto on loopback, behind the recording,
//! fault-injecting proxy (tests/doubles/awsproxy.py). Results are checked with the AWS
//! CLI's describe calls, not with haimg's own reads; calls are counted at the proxy.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{kill_group, wait_child, Moto};
use common::proxy::{assert_operator_policy_allows, assert_policies_accepted, aws, Proxy};
use common::*;
use serde_json::{json, Value};

const REGION: &str = "us-west-2";

struct Env {
    moto: Moto,
    proxy: Proxy,
    dir: tempfile::TempDir,
    spec: PathBuf,
    ami: String,
    vpc: String,
    cluster: &'static str,
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// moto with a VPC, three subnets, a security group, the instance profiles, and an image
/// published under the parameter the example spec reads; the example spec with those ids.
fn setup() -> Env {
    setup_with("examples/cluster.yaml", "demo")
}

fn setup_with(example: &str, cluster: &'static str) -> Env {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto);
    let cli = |args: &[&str]| aws(&moto, REGION, args);
    let vpc = s(&cli(&["ec2", "create-vpc", "--cidr-block", "10.0.0.0/16"])["Vpc"]["VpcId"]);
    let subnets: Vec<String> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, az)| {
            s(&cli(&[
                "ec2",
                "create-subnet",
                "--vpc-id",
                &vpc,
                "--cidr-block",
                &format!("10.0.{}.0/24", i + 1),
                "--availability-zone",
                &format!("{REGION}{az}"),
            ])["Subnet"]["SubnetId"])
        })
        .collect();
    let sg = s(&cli(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "nodes",
        "--description",
        "nodes",
        "--vpc-id",
        &vpc,
    ])["GroupId"]);
    let ami = s(&cli(&["ec2", "describe-images", "--owners", "amazon"])["Images"][0]["ImageId"]);
    cli(&[
        "ssm",
        "put-parameter",
        "--name",
        "/haimg/images/ubuntu-20.04-k8s/latest",
        "--type",
        "String",
        "--value",
        &ami,
    ]);
    for p in ["demo-master", "demo-worker"] {
        cli(&[
            "iam",
            "create-instance-profile",
            "--instance-profile-name",
            p,
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("cluster.yaml");
    let text = std::fs::read_to_string(repo().join(example))
        .unwrap()
        .replace("vpc-0123456789abcdef0", &vpc)
        .replace("subnet-0a1b2c3d4e5f60001", &subnets[0])
        .replace("subnet-0a1b2c3d4e5f60002", &subnets[1])
        .replace("subnet-0a1b2c3d4e5f60003", &subnets[2])
        .replace("sg-0123456789abcdef0", &sg);
    assert!(text.contains(&subnets[2]) && text.contains(&sg));
    std::fs::write(&spec, text).unwrap();
    Env {
        moto,
        proxy,
        dir,
        spec,
        ami,
        vpc,
        cluster,
    }
}

impl Env {
    fn cli(&self, args: &[&str]) -> Value {
        aws(&self.moto, REGION, args)
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = haimg();
        c.env("AWS_ENDPOINT_URL", &self.proxy.url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(args)
            .arg("-c")
            .arg(&self.spec)
            .stdin(Stdio::null());
        c
    }
    fn haimg(&self, args: &[&str]) -> Output {
        run(self.cmd(args))
    }
    fn ok(&self, args: &[&str]) -> Output {
        let o = self.haimg(args);
        assert!(
            o.status.success(),
            "haimg {args:?}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        o
    }
    fn edit_spec(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.spec).unwrap();
        let i = text.rfind(from).expect("text to edit");
        let edited = format!("{}{to}{}", &text[..i], &text[i + from.len()..]);
        std::fs::write(&self.spec, edited).unwrap();
    }
    /// `render --all` of the current spec: what `up` must have applied.
    fn rendered(&self) -> PathBuf {
        let out = self.dir.path().join("rendered");
        let _ = std::fs::remove_dir_all(&out);
        render_all_into(&self.spec, &out);
        out
    }
    fn tags_of_elb(&self, arn: &str) -> Value {
        self.cli(&["elbv2", "describe-tags", "--resource-arns", arn])["TagDescriptions"][0]["Tags"]
            .clone()
    }
    /// `field` of every item in the CLI answer's `key` list.
    fn names(&self, args: &[&str], key: &str, field: &str) -> Vec<String> {
        self.cli(args)[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| s(&item[field]))
            .collect()
    }
    /// Everything still tagged haimg:cluster=<cluster> (instances that are not terminated).
    fn tagged(&self) -> Vec<String> {
        let c = self.cluster;
        let mut left: Vec<String> = [
            self.names(
                &["elbv2", "describe-load-balancers"],
                "LoadBalancers",
                "LoadBalancerArn",
            ),
            self.names(
                &["elbv2", "describe-target-groups"],
                "TargetGroups",
                "TargetGroupArn",
            ),
        ]
        .concat()
        .into_iter()
        .filter(|arn| has_tag(&self.tags_of_elb(arn), "haimg:cluster", c))
        .collect();
        let tag_filter = format!("Name=tag:haimg:cluster,Values={c}");
        left.extend(self.names(
            &["ec2", "describe-launch-templates", "--filters", &tag_filter],
            "LaunchTemplates",
            "LaunchTemplateName",
        ));
        left.extend(self.names(
            &[
                "autoscaling",
                "describe-tags",
                "--filters",
                "Name=key,Values=haimg:cluster",
                &format!("Name=value,Values={c}"),
            ],
            "Tags",
            "ResourceId",
        ));
        let live = "Name=instance-state-name,Values=pending,running,stopping,stopped";
        for r in self.cli(&["ec2", "describe-instances", "--filters", &tag_filter, live])
            ["Reservations"]
            .as_array()
            .unwrap()
        {
            left.extend(
                r["Instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| s(&i["InstanceId"])),
            );
        }
        left.extend(params(self));
        // Terminated instances keep their tags for a while (as in AWS); checked above.
        for arn in self.names(
            &[
                "resourcegroupstaggingapi",
                "get-resources",
                "--tag-filters",
                &format!("Key=haimg:cluster,Values={c}"),
            ],
            "ResourceTagMappingList",
            "ResourceARN",
        ) {
            if !arn.contains(":instance/") && !left.contains(&arn) {
                left.push(arn);
            }
        }
        left
    }
}

/// Every needle is in the text; the failure shows the text.
fn assert_has(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

fn has_tag(tags: &Value, key: &str, value: &str) -> bool {
    tags.as_array()
        .unwrap()
        .iter()
        .any(|t| t["Key"] == key && t["Value"] == value)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Every member of `want` is in `have` with the same value (AWS adds fields of its own).
fn assert_subset(want: &Value, have: &Value, path: &str) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                let got = h
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} is missing in {have}"));
                assert_subset(v, got, &format!("{path}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(h)) => {
            assert_eq!(w.len(), h.len(), "{path}: {want} vs {have}");
            for (i, (a, b)) in w.iter().zip(h).enumerate() {
                assert_subset(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(want, have, "{path}"),
    }
}

/// The `ResourceType: launch-template` entry some implementations echo into the data.
fn data_tag_specs(v: &Value) -> Value {
    Value::Array(
        v.as_array()
            .unwrap()
            .iter()
            .filter(|t| t["ResourceType"] != "launch-template")
            .cloned()
            .collect(),
    )
}

#[test]
fn up_creates_exactly_the_rendered_resources_and_a_second_up_changes_nothing() {
    let env = setup();
    // A dry run shows the plan and writes nothing.
    let o = env.ok(&["up", "--dry-run"]);
    let plan = stdout(&o);
    assert_has(
        &plan,
        &[
            "+ load balancer demo-api: internal network",
            "+ target group demo-api: TCP/6443 instance targets, health check HTTPS 6443/readyz",
            "    preserve_client_ip.enabled: (none) → \"false\"",
            "+ listener TCP/6443",
            "+ launch template demo-master: t3.large",
            "+ auto scaling group demo-master: min 3 max 3 desired 3",
            "~ auto scaling group demo-master: suspend AZRebalance",
            "+ auto scaling group demo-worker-general: min 1 max 5 desired 2",
            "+ ssm parameter /haimg/demo/cluster",
            "cluster demo: 10 change(s) (8 to create); nothing was changed (--dry-run)",
        ],
    );
    assert_eq!(
        env.proxy.mutating_calls(),
        Vec::<String>::new(),
        "--dry-run changes nothing"
    );
    // The same plan as one JSON document.
    let v: Value =
        serde_json::from_slice(&env.ok(&["up", "--dry-run", "--output", "json"]).stdout).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(
        (v["cluster"].as_str(), v["dryRun"].as_bool()),
        (Some("demo"), Some(true))
    );
    assert_eq!(changes.len(), 10, "{v}");
    assert_eq!(
        changes.iter().filter(|c| c["action"] == "create").count(),
        8,
        "{v}"
    );
    assert_eq!(
        changes[0],
        json!({"action": "create", "resource": "load balancer demo-api",
               "summary": changes[0]["summary"], "diff": []})
    );
    let attrs = changes
        .iter()
        .find(|c| c["summary"] == "target group demo-api: attributes")
        .unwrap();
    assert!(
        attrs["diff"].as_array().unwrap().contains(
            &json!({"field": "preserve_client_ip.enabled", "from": "(none)", "to": "\"false\""})
        ),
        "{attrs}"
    );
    assert!(v["applied"].is_null(), "{v}");
    assert_eq!(env.proxy.mutating_calls(), Vec::<String>::new());

    env.proxy.reset_log();
    let started = Instant::now();
    env.ok(&["up"]);
    let wall = started.elapsed();
    let calls = env.proxy.all_calls();
    let mutating = env.proxy.mutating_calls();
    eprintln!(
        "first up: {} API calls ({} mutating) in {} ms",
        calls.len(),
        mutating.len(),
        wall.as_millis()
    );
    let rendered = env.rendered();
    let file = |p: &str| read_json(&rendered.join(p));

    // The load balancer, its target group and listener, as rendered.
    let lb =
        &env.cli(&["elbv2", "describe-load-balancers", "--names", "demo-api"])["LoadBalancers"][0];
    assert_eq!(lb["Type"], "network");
    assert_eq!(lb["Scheme"], "internal");
    assert_eq!(lb["AvailabilityZones"].as_array().unwrap().len(), 3);
    let lb_arn = s(&lb["LoadBalancerArn"]);
    let want_tags = file("load-balancer/load-balancer.json")["Tags"].clone();
    for t in want_tags.as_array().unwrap() {
        assert!(
            has_tag(&env.tags_of_elb(&lb_arn), &s(&t["Key"]), &s(&t["Value"])),
            "lb tag {t}"
        );
    }
    let tg =
        &env.cli(&["elbv2", "describe-target-groups", "--names", "demo-api"])["TargetGroups"][0];
    let mut want_tg = file("load-balancer/target-group.json");
    let tg_tags = want_tg.as_object_mut().unwrap().remove("Tags").unwrap();
    let tg_name = want_tg.as_object_mut().unwrap().remove("Name").unwrap();
    assert_eq!(tg["TargetGroupName"], tg_name);
    assert_subset(&want_tg, tg, "target group");
    assert_eq!(tg["Protocol"], "TCP");
    assert_eq!(tg["Port"], 6443);
    assert_eq!(tg["HealthCheckPath"], "/readyz");
    assert_eq!(tg["VpcId"], env.vpc.as_str());
    let tg_arn = s(&tg["TargetGroupArn"]);
    for t in tg_tags.as_array().unwrap() {
        assert!(
            has_tag(&env.tags_of_elb(&tg_arn), &s(&t["Key"]), &s(&t["Value"])),
            "tg tag {t}"
        );
    }
    let attrs = env.cli(&[
        "elbv2",
        "describe-target-group-attributes",
        "--target-group-arn",
        &tg_arn,
    ])["Attributes"]
        .clone();
    let attr = |k: &str| {
        attrs
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["Key"] == k)
            .map(|a| s(&a["Value"]))
    };
    assert_eq!(
        attr("preserve_client_ip.enabled").as_deref(),
        Some("false"),
        "NLB hairpinning"
    );
    for a in file("load-balancer/target-group-attributes.json")["Attributes"]
        .as_array()
        .unwrap()
    {
        assert_eq!(attr(&s(&a["Key"])), Some(s(&a["Value"])), "attribute {a}");
    }
    let listeners = env.cli(&[
        "elbv2",
        "describe-listeners",
        "--load-balancer-arn",
        &lb_arn,
    ])["Listeners"]
        .clone();
    assert_eq!(listeners.as_array().unwrap().len(), 1);
    assert_eq!(listeners[0]["Protocol"], "TCP");
    assert_eq!(listeners[0]["Port"], 6443);
    assert_eq!(
        listeners[0]["DefaultActions"][0]["TargetGroupArn"],
        tg_arn.as_str()
    );

    // Launch templates: the rendered data, with the AMI resolved from the parameter.
    for stem in ["master", "worker-general"] {
        let want = file(&format!("launch-templates/{stem}.json"));
        let name = s(&want["LaunchTemplateName"]);
        let v = &env.cli(&[
            "ec2",
            "describe-launch-template-versions",
            "--launch-template-name",
            &name,
            "--versions",
            "$Default",
        ])["LaunchTemplateVersions"][0];
        assert_eq!(v["VersionNumber"], 1);
        let mut want_data = want["LaunchTemplateData"].clone();
        assert!(s(&want_data["ImageId"]).starts_with("resolve:ssm:"));
        want_data["ImageId"] = json!(env.ami);
        let mut have = v["LaunchTemplateData"].clone();
        have["TagSpecifications"] = data_tag_specs(&have["TagSpecifications"]);
        assert_subset(&want_data, &have, &name);
        assert_eq!(have["MetadataOptions"]["HttpTokens"], "required");
        assert_eq!(have["MetadataOptions"]["HttpPutResponseHopLimit"], 1);
        let lt = &env.cli(&[
            "ec2",
            "describe-launch-templates",
            "--launch-template-names",
            &name,
        ])["LaunchTemplates"][0];
        assert!(has_tag(&lt["Tags"], "haimg:cluster", "demo"), "{lt}");
    }

    // Auto Scaling groups: sizes, subnets, target group, hooks, tags; the control plane
    // never rebalances across zones.
    for stem in ["master", "worker-general"] {
        let want = file(&format!("autoscaling/{stem}.json"));
        let name = s(&want["AutoScalingGroupName"]);
        let g = &env.cli(&[
            "autoscaling",
            "describe-auto-scaling-groups",
            "--auto-scaling-group-names",
            &name,
        ])["AutoScalingGroups"][0];
        for k in [
            "MinSize",
            "MaxSize",
            "DesiredCapacity",
            "HealthCheckType",
            "HealthCheckGracePeriod",
            "VPCZoneIdentifier",
            "TerminationPolicies",
        ] {
            assert_eq!(g[k], want[k], "{name} {k}");
        }
        assert_eq!(
            g["LaunchTemplate"]["LaunchTemplateName"],
            want["LaunchTemplate"]["LaunchTemplateName"]
        );
        assert_eq!(g["LaunchTemplate"]["Version"], "$Default");
        for t in want["Tags"].as_array().unwrap() {
            assert!(
                has_tag(&g["Tags"], &s(&t["Key"]), &s(&t["Value"])),
                "{name} tag {t}"
            );
        }
        let suspended: Vec<String> = g["SuspendedProcesses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| s(&p["ProcessName"]))
            .collect();
        let hooks = env.cli(&[
            "autoscaling",
            "describe-lifecycle-hooks",
            "--auto-scaling-group-name",
            &name,
        ])["LifecycleHooks"]
            .clone();
        assert_eq!(hooks.as_array().unwrap().len(), 1, "{name}: {hooks}");
        assert_eq!(hooks[0]["LifecycleHookName"], "haimg-drain");
        assert_eq!(
            hooks[0]["LifecycleTransition"],
            "autoscaling:EC2_INSTANCE_TERMINATING"
        );
        assert_eq!(hooks[0]["HeartbeatTimeout"], 600);
        if stem == "master" {
            assert_eq!(g["TargetGroupARNs"], json!([tg_arn]));
            assert_eq!(suspended, ["AZRebalance"]);
        } else {
            assert_eq!(g["TargetGroupARNs"], json!([]));
            assert!(suspended.is_empty());
        }
    }
    let marker = env.cli(&["ssm", "get-parameter", "--name", "/haimg/demo/cluster"]);
    let marker: Value = serde_json::from_str(&s(&marker["Parameter"]["Value"])).unwrap();
    assert_eq!(marker["cluster"], "demo");
    // Nothing more than the rendered resources.
    assert_eq!(
        env.cli(&["elbv2", "describe-load-balancers"])["LoadBalancers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        env.cli(&["elbv2", "describe-target-groups"])["TargetGroups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        env.cli(&["ec2", "describe-launch-templates"])["LaunchTemplates"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        env.cli(&["autoscaling", "describe-auto-scaling-groups"])["AutoScalingGroups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A second up reads, and changes nothing.
    env.proxy.reset_log();
    let started = Instant::now();
    let o = env.ok(&["up"]);
    eprintln!(
        "second up: {} API calls, 0 mutating expected, in {} ms",
        env.proxy.all_calls().len(),
        started.elapsed().as_millis()
    );
    assert_eq!(
        env.proxy.mutating_calls(),
        Vec::<String>::new(),
        "{}",
        stderr(&o)
    );
    assert_has(&stderr(&o), &["cluster demo: up to date, no changes"]);
    assert!(stdout(&env.ok(&["up", "--dry-run"])).contains("cluster demo: no changes"));

    // Another worker instance type: one new launch template version, the default, and
    // nothing else.
    env.edit_spec("instanceType: t3.large", "instanceType: m5.xlarge");
    let plan = stdout(&env.ok(&["up", "--dry-run"]));
    assert_eq!(
        plan,
        "~ launch template demo-worker-general: new version 2, made the default (was 1)\n    InstanceType: \"t3.large\" → \"m5.xlarge\"\ncluster demo: 1 change(s) (0 to create); nothing was changed (--dry-run)\n"
    );
    env.proxy.reset_log();
    env.ok(&["up"]);
    assert_eq!(
        env.proxy.mutating_calls(),
        [
            "ec2:CreateLaunchTemplateVersion",
            "ec2:ModifyLaunchTemplate"
        ]
    );
    let versions = env.cli(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        "demo-worker-general",
    ])["LaunchTemplateVersions"]
        .clone();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let default = &env.cli(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        "demo-worker-general",
        "--versions",
        "$Default",
    ])["LaunchTemplateVersions"][0];
    assert_eq!(default["VersionNumber"], 2);
    assert_eq!(default["LaunchTemplateData"]["InstanceType"], "m5.xlarge");
    let master_versions = env.cli(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        "demo-master",
    ])["LaunchTemplateVersions"]
        .clone();
    assert_eq!(master_versions.as_array().unwrap().len(), 1);

    // down asks first; without a terminal and without --yes it refuses and deletes nothing.
    env.proxy.reset_log();
    let o = env.haimg(&["down"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_has(&stderr(&o), &["pass --yes"]);
    assert_eq!(env.proxy.mutating_calls(), Vec::<String>::new());
    assert!(!env.tagged().is_empty());

    let o = env.ok(&["down", "--yes", "--poll", "100ms", "-q"]);
    assert_has(&stdout(&o), &["cluster demo: deleted 8 resource(s)"]);
    assert_eq!(stderr(&o), "", "--quiet with --yes: no list, no steps");
    assert_eq!(
        env.tagged(),
        Vec::<String>::new(),
        "down leaves nothing tagged"
    );
    // Idempotent: nothing left to do, nothing changed.
    env.proxy.reset_log();
    let o = env.ok(&["down", "--yes"]);
    assert!(stdout(&o).contains("nothing to delete"));
    assert_eq!(env.proxy.mutating_calls(), Vec::<String>::new());
    // Whoever ran all of that needed no more than iam/operator-policy.json, and every
    // rendered policy is one IAM accepts.
    let rendered = env.rendered();
    assert_operator_policy_allows(&rendered, &env.proxy.every_call(), "up, status and down");
    assert_policies_accepted(&env.moto, &rendered);
}

#[test]
fn an_interrupted_up_resumes_and_down_finishes_after_any_partial_run() {
    let env = setup();
    // The second group's creation fails: the first run stops there and says so.
    env.proxy.set_rules(json!([{
        "action": "autoscaling:CreateAutoScalingGroup", "after": 1, "times": 1,
        "error": {"status": 400, "code": "LimitExceeded", "message": "injected: too many groups"}
    }]));
    let o = env.haimg(&["up"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_has(
        &err,
        &[
            "autoscaling CreateAutoScalingGroup demo-worker-general",
            "too many groups",
            "up stopped part-way: 8 change(s) made (listed above), 2 not made:",
            "+ auto scaling group demo-worker-general",
            "Run `haimg up` again to finish",
        ],
    );
    // Re-running finishes the job: only what is missing is created.
    env.proxy.reset_log();
    env.ok(&["up"]);
    // (moto ignores the hooks in CreateAutoScalingGroup: `up` checks and puts them.)
    assert_eq!(
        env.proxy.mutating_calls(),
        [
            "autoscaling:CreateAutoScalingGroup",
            "autoscaling:PutLifecycleHook",
            "ssm:PutParameter"
        ]
    );
    env.proxy.reset_log();
    env.ok(&["up"]);
    assert_eq!(env.proxy.mutating_calls(), Vec::<String>::new());

    // A down that fails part-way is finished by the next one.
    env.proxy.set_rules(json!([{
        "action": "elasticloadbalancing:DeleteLoadBalancer", "times": 1,
        "error": {"status": 400, "code": "OperationNotPermitted", "message": "injected"}
    }]));
    let o = env.haimg(&["down", "--yes", "--poll", "100ms"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_has(&stderr(&o), &["elbv2 DeleteLoadBalancer demo-api"]);
    assert_has(&stderr(&o), &["run `haimg down` again to finish"]);
    assert!(!env.tagged().is_empty());
    env.ok(&["down", "--yes", "--poll", "100ms"]);
    assert_eq!(env.tagged(), Vec::<String>::new());

    // Ctrl-C while a launch template is being created (the call took effect, its answer
    // had not come back): down still finds and removes everything.
    env.proxy
        .set_rules(json!([{"action": "ec2:CreateLaunchTemplate", "delay": 5, "times": 1}]));
    env.proxy.reset_log();
    let mut child = {
        let mut c = env.cmd(&["up"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c.spawn().unwrap()
    };
    // Interrupt once the call has taken effect (the template exists) while its answer is
    // still held by the proxy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.cli(&["ec2", "describe-launch-templates"])["LaunchTemplates"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "up never created its first launch template"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_child(&mut child, Duration::from_secs(20));
    if status.is_none() {
        kill_group(&mut child);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_has(
        &err,
        &["interrupted (Ctrl-C)", "+ launch template demo-master"],
    );
    assert!(
        env.cli(&["ec2", "describe-launch-templates"])["LaunchTemplates"]
            .as_array()
            .unwrap()
            .len()
            == 1,
        "the interrupted call took effect"
    );
    env.ok(&["down", "--yes", "--poll", "100ms"]);
    assert_eq!(
        env.tagged(),
        Vec::<String>::new(),
        "down after an interrupted up"
    );
}

fn put_param(env: &Env, name: &str, value: &Value, secure: bool) {
    env.cli(&[
        "ssm",
        "put-parameter",
        "--name",
        name,
        "--type",
        if secure { "SecureString" } else { "String" },
        "--value",
        &value.to_string(),
        "--overwrite",
    ]);
}

/// haimg's parameters and any other under the cluster's prefix, sorted.
fn params(env: &Env) -> Vec<String> {
    let prefix = format!("/haimg/{}", env.cluster);
    let mut v = env.names(
        &[
            "ssm",
            "get-parameters-by-path",
            "--path",
            &prefix,
            "--recursive",
        ],
        "Parameters",
        "Name",
    );
    v.sort();
    v
}

fn rfc3339(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

const TOKEN: &str = "abcdef.0123456789abcdef";
const CERT_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn publish_join_material(env: &Env, expires_in: i64) {
    let m = |key: bool| {
        let mut v = json!({
            "endpoint": "demo-api.elb:6443",
            "token": TOKEN,
            "caCertHashes": ["sha256:00"],
            "kubernetesVersion": "1.30.4",
            "issuedAt": rfc3339(-600),
            "expiresAt": rfc3339(expires_in),
            "generation": 3,
        });
        if key {
            v["certificateKey"] = json!(CERT_KEY);
        }
        v
    };
    put_param(env, "/haimg/demo/join/control-plane", &m(true), true);
    put_param(env, "/haimg/demo/join/worker", &m(false), true);
    // What the agent writes beside them for `status`.
    put_param(
        env,
        "/haimg/demo/join/times",
        &json!({"generation": 3, "issuedAt": rfc3339(-600),
                "controlPlaneExpiresAt": rfc3339(expires_in), "workerExpiresAt": rfc3339(expires_in)}),
        false,
    );
}

#[test]
fn status_shows_phase_targets_and_join_material_age_and_up_waits_for_health() {
    let env = setup();
    // Nothing exists: degraded, and it says why.
    let o = env.haimg(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert_has(&stdout(&o), &["auto scaling group demo-master: missing"]);

    env.ok(&["up"]);
    let o = env.haimg(&["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert_has(&stdout(&o), &["problem: no cluster state yet"]);

    // --wait is bounded, and says what it waited for.
    let o = env.haimg(&["up", "--wait", "--timeout", "1s", "--poll", "100ms"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_has(
        &stderr(&o),
        &["timed out: cluster demo still not healthy (no cluster state yet"],
    );

    // `up --wait` returns once the first master has published: state ready, join material.
    env.proxy.reset_log();
    let mut child = {
        let mut c = env.cmd(&["up", "--wait", "--timeout", "60s", "--poll", "100ms"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    // Three polls of the state parameter that found none: still waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.proxy.calls("GetParameter") < 3 {
        assert!(
            Instant::now() < deadline,
            "up --wait never polled the state"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "up --wait returned before the cluster was ready"
    );
    put_param(
        &env,
        "/haimg/demo/state",
        &json!({"phase": "ready", "initializedBy": "i-0init", "initializedAt": rfc3339(-900),
                "etcd": {"members": 3, "dead": [], "checkedAt": rfc3339(-30), "checkedBy": "i-0other"}}),
        false,
    );
    publish_join_material(&env, 3000);
    let status = wait_child(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    assert_has(&err, &["waiting: no cluster state yet", "healthy after"]);

    // An operator with only iam/status-policy.json: reading a secret parameter, or asking
    // for decryption, is refused.
    let denied = |body: &str| {
        json!({"action": "ssm:GetParameter", "body": body,
        "error": {"status": 400, "code": "AccessDeniedException", "message": "not in iam/status-policy.json"}})
    };
    env.proxy.set_rules(json!([
        denied("join/control-plane"),
        denied("join/worker"),
        denied("\"WithDecryption\":true"),
    ]));
    env.proxy.reset_log();
    let o = env.ok(&["status"]);
    let calls = env.proxy.all_calls();
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(env.rendered().join("iam/status-policy.json")).unwrap(),
    )
    .unwrap();
    let allowed: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|st| st["Action"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(!calls.is_empty());
    for call in calls {
        assert!(
            allowed.contains(&call),
            "status called {call}, which iam/status-policy.json does not allow: {allowed:?}"
        );
    }
    assert!(
        !policy.to_string().contains("kms:") && !policy.to_string().contains("join/control-plane"),
        "{policy}"
    );
    env.proxy.set_rules(json!([]));
    let text = stdout(&o);
    assert_has(
        &text,
        &[
            "cluster demo (us-west-2): healthy",
            "phase: ready, initialized by i-0init at ",
            "etcd: 3 member(s), 0 dead",
            "join material /haimg/demo/join/control-plane: generation 3, issued ",
            "join material /haimg/demo/join/worker: generation 3",
            "auto scaling group demo-master: 3/3 in service (min 3, max 3)",
            "auto scaling group demo-worker-general: 2/2 in service (min 1, max 5)",
            "target group demo-api: 3/3 healthy",
            "InService",
        ],
    );
    let json_out = env.ok(&["status", "--output", "json"]);
    let v: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["state"]["phase"], "ready");
    assert_eq!(v["state"]["initializedBy"], "i-0init");
    assert_eq!(v["join"].as_array().unwrap().len(), 2);
    assert!(v["join"][0]["expiresAt"].is_string());
    assert_eq!(v["groups"][0]["instances"].as_array().unwrap().len(), 3);
    assert_eq!(v["targetGroup"]["targets"].as_array().unwrap().len(), 3);
    for o in [&o, &json_out] {
        for secret in [TOKEN, CERT_KEY] {
            assert!(
                !stdout(o).contains(secret) && !stderr(o).contains(secret),
                "status shows a secret"
            );
        }
    }

    // Expired join material: degraded, and named.
    publish_join_material(&env, -60);
    let o = env.haimg(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert_has(
        &stdout(&o),
        &["problem: join/control-plane material expired at"],
    );
    assert!(!stdout(&o).contains(TOKEN));
}

#[test]
fn resources_of_others_are_never_touched_and_leftover_join_material_is_cleared() {
    let env = setup();
    // A target group with our name that is not ours: up refuses before changing anything,
    // down leaves it alone.
    let foreign = s(&env.cli(&[
        "elbv2",
        "create-target-group",
        "--name",
        "demo-api",
        "--protocol",
        "TCP",
        "--port",
        "6443",
        "--vpc-id",
        &env.vpc,
    ])["TargetGroups"][0]["TargetGroupArn"]);
    env.proxy.reset_log();
    let o = env.haimg(&["up"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_has(
        &stderr(&o),
        &["target group demo-api exists but is not tagged haimg:cluster=demo"],
    );
    assert_eq!(env.proxy.mutating_calls(), Vec::<String>::new());
    let o = env.ok(&["down", "--yes"]);
    assert_has(
        &stderr(&o),
        &["warning: target group demo-api is not tagged haimg:cluster=demo: left alone"],
    );
    env.cli(&[
        "elbv2",
        "delete-target-group",
        "--target-group-arn",
        &foreign,
    ]);

    // An earlier cluster's join material under the prefix: a new control plane must never
    // read it, so up deletes it before the first group exists. Other parameters stay.
    publish_join_material(&env, 3000);
    put_param(
        &env,
        "/haimg/demo/state",
        &json!({"phase": "ready", "initializedBy": "i-old", "initializedAt": rfc3339(-86400)}),
        false,
    );
    put_param(&env, "/haimg/demo/notes", &json!("not haimg's"), false);
    let plan = stdout(&env.ok(&["up", "--dry-run"]));
    assert!(
        plan.contains("- ssm parameters left by an earlier cluster (no control-plane group exists): /haimg/demo/join/control-plane, /haimg/demo/join/times, /haimg/demo/join/worker, /haimg/demo/state"),
        "{plan}"
    );
    let o = env.ok(&["up"]);
    assert!(!stderr(&o).contains(TOKEN), "{}", stderr(&o));
    let left = params(&env);
    assert_eq!(left, ["/haimg/demo/cluster", "/haimg/demo/notes"]);
    env.ok(&["down", "--yes", "--poll", "100ms"]);
    let left = params(&env);
    assert_eq!(
        left,
        ["/haimg/demo/notes"],
        "down deletes haimg's parameters only"
    );
}

#[test]
fn a_launch_template_not_yet_visible_to_auto_scaling_is_waited_out() {
    let env = setup();
    // AWS is eventually consistent: right after CreateLaunchTemplate, Auto Scaling may not
    // see it yet. That is retried (bounded); a real rejection is not.
    env.proxy.set_rules(json!([{
        "action": "autoscaling:CreateAutoScalingGroup", "times": 2,
        "error": {"status": 400, "code": "ValidationError",
                  "message": "You must use a valid fully-formed launch template. The specified launch template, with template name demo-master, does not exist."}
    }]));
    env.proxy.reset_log();
    let o = env.ok(&["up"]);
    let creates = env
        .proxy
        .all_calls()
        .iter()
        .filter(|c| *c == "autoscaling:CreateAutoScalingGroup")
        .count();
    assert_eq!(creates, 4, "two refused, then both groups: {}", stderr(&o));
    env.ok(&["down", "--yes", "--poll", "100ms"]);

    env.proxy.set_rules(json!([{
        "action": "autoscaling:CreateAutoScalingGroup",
        "error": {"status": 400, "code": "ValidationError", "message": "Max bound, 2, must be greater than or equal to min bound, 3"}
    }]));
    env.proxy.reset_log();
    let o = env.haimg(&["up"]);
    assert_eq!(o.status.code(), Some(1));
    assert_has(
        &stderr(&o),
        &["autoscaling CreateAutoScalingGroup demo-master"],
    );
    assert_has(&stderr(&o), &["Max bound"]);
    let creates = env
        .proxy
        .all_calls()
        .iter()
        .filter(|c| *c == "autoscaling:CreateAutoScalingGroup")
        .count();
    assert_eq!(creates, 1, "a real rejection is not retried");
    env.proxy.set_rules(json!([]));
    env.ok(&["down", "--yes", "--poll", "100ms"]);
    assert_eq!(env.tagged(), Vec::<String>::new());
}

#[test]
fn with_fixed_masters_up_manages_the_worker_pools_only() {
    let env = setup_with("examples/cluster-vip.yaml", "onprem");
    let plan = stdout(&env.ok(&["up", "--dry-run"]));
    assert!(
        !plan.contains("load balancer") && !plan.contains("master"),
        "{plan}"
    );
    env.ok(&["up"]);
    let lts: Vec<String> = env.cli(&["ec2", "describe-launch-templates"])["LaunchTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| s(&t["LaunchTemplateName"]))
        .collect();
    assert_eq!(lts, ["onprem-worker-general"]);
    let groups: Vec<String> = env.cli(&["autoscaling", "describe-auto-scaling-groups"])
        ["AutoScalingGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| s(&g["AutoScalingGroupName"]))
        .collect();
    assert_eq!(groups, ["onprem-worker-general"]);
    assert!(
        env.cli(&["elbv2", "describe-load-balancers"])["LoadBalancers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    env.proxy.reset_log();
    env.ok(&["up"]);
    assert_eq!(env.proxy.mutating_calls(), Vec::<String>::new());
    // The masters are outside AWS: status judges the pools and the SSM state.
    let o = env.haimg(&["status", "--output", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.get("targetGroup").is_none(), "{v}");
    assert_eq!(
        v["problems"],
        json!(["no cluster state yet: no control-plane node has initialized"])
    );
    let rendered = env.rendered();
    assert_operator_policy_allows(&rendered, &env.proxy.every_call(), "up and status (VIP)");
    assert_policies_accepted(&env.moto, &rendered);
    // A pool renamed in the spec: the new one is created, the old one is named (never
    // deleted behind the user's back), and down finds it by its tag.
    env.edit_spec("name: general", "name: batch");
    let o = env.ok(&["up"]);
    assert_has(&stderr(&o), &["warning: auto scaling group onprem-worker-general is tagged haimg:cluster=onprem but is not in the spec any more"]);
    let o = env.ok(&["down", "--yes", "--poll", "100ms", "--output", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut groups: Vec<String> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "auto scaling group")
        .map(|r| s(&r["name"]))
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        ["onprem-worker-batch", "onprem-worker-general"],
        "{v}"
    );
    assert_eq!(v["leftAlone"], json!([]), "{v}");
    assert_has(
        &stderr(&o),
        &["auto scaling group onprem-worker-general (and its instances)"],
    );
    assert_has(
        &stderr(&o),
        &["auto scaling group onprem-worker-batch (and its instances)"],
    );
    assert_eq!(env.tagged(), Vec::<String>::new());
}

/// Runs `cmd` with a terminal for its stdin, stdout and stderr (util-linux `script`), as a
/// person at a shell runs it; returns every byte the terminal received and the exit code.
fn on_terminal(cmd: Command) -> (Vec<u8>, i32) {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    // A terminal of 200 columns and 60 rows, as a window gives one (script sizes its own
    // after its stdin, which here is no terminal: 0 by 0).
    let line = format!("stty cols 200 rows 60 && exec {line}");
    let mut script = Command::new("script");
    script.args([
        "--quiet",
        "--return",
        "--flush",
        "--command",
        &line,
        "/dev/null",
    ]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    let o = run(script);
    (o.stdout, o.status.code().unwrap_or(-1))
}

/// What is on a 200-column terminal after those bytes: the lines a person reads.
fn screen(bytes: &[u8]) -> Vec<String> {
    let mut term = vt100::Parser::new(60, 200, 0);
    term.process(bytes);
    // Row by row: a line drawn to the last column continues on the next row as far as
    // the emulator's text is concerned, though a person sees two lines.
    term.screen()
        .rows(0, 200)
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

const SPINNER_FRAMES: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";

#[test]
fn on_a_terminal_progress_is_a_spinner_unless_no_progress_or_quiet() {
    let env = setup();
    let (bytes, code) = on_terminal(env.cmd(&["up"]));
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.chars().any(|c| SPINNER_FRAMES.contains(c)),
        "a spinner was drawn: {text:?}"
    );
    let lines = screen(&bytes);
    // Each change, once done, is a line of its own with the time it took, in order; the
    // result follows, and no spinner is left on the screen.
    let steps: Vec<&String> = lines.iter().filter(|l| l.starts_with('[')).collect();
    assert_eq!(steps.len(), 10, "{lines:#?}");
    for (i, l) in steps.iter().enumerate() {
        assert!(l.starts_with(&format!("[{}/10] ", i + 1)), "{lines:#?}");
        let time = l.rsplit_once(" (").map(|(_, t)| t).unwrap_or("");
        assert!(
            time.ends_with("s)") && time[..time.len() - 2].parse::<f64>().is_ok(),
            "no time on {l:?}: {lines:#?}"
        );
    }
    assert!(steps[0].contains("+ load balancer demo-api"), "{lines:#?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("cluster demo: 10 change(s) applied"),
        "{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.chars().any(|c| SPINNER_FRAMES.contains(c))),
        "{lines:#?}"
    );

    // --no-progress: the same steps as plain lines, nothing redrawn.
    let (bytes, code) = on_terminal(env.cmd(&["up", "--no-progress"]));
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains('\x1b'), "no escape sequences: {text:?}");
    assert_eq!(
        screen(&bytes),
        [
            "cluster demo: up to date, no changes",
            "cluster demo: 0 change(s) applied"
        ],
        "{text}"
    );
    let (bytes, code) = on_terminal(env.cmd(&["down", "--yes", "--no-progress"]));
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains('\x1b'), "no escape sequences: {text:?}");
    assert!(
        !text.chars().any(|c| SPINNER_FRAMES.contains(c)),
        "{text:?}"
    );
    assert_has(
        &text,
        &[
            "- deleted auto scaling group demo-master",
            "- deleted load balancer",
        ],
    );

    // --quiet on a terminal: the result only.
    let (bytes, code) = on_terminal(env.cmd(&["up", "--quiet"]));
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        screen(&bytes),
        ["cluster demo: 10 change(s) applied"],
        "{text}"
    );
    env.ok(&["down", "--yes", "--quiet"]);
}
