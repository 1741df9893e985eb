//! The bake, against AWS (DESIGN §5): cache lookup, base image, staging, builder, SSM Run
//! Command, image, tags, copies, parameters.
//!
//! # Guarantees
//! - Everything the bake creates before the image is complete (the builder instance, the
//!   staging bucket and object, an unfinished image and its snapshots) is recorded in
//!   [`Created`] the moment it exists and removed by [`cleanup`] on every path: success,
//!   script failure, timeout, API error and Ctrl-C (the caller races the flow against the
//!   signal and cleans up either way). `--keep-builder` keeps only the instance.
//! - A bake whose hash already has an image launches nothing (unless `--force`).
//! - Every wait is bounded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_ec2::types as ec2t;
use base64::Engine;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;

use super::Plan;
use crate::error::{Error, Result};
use crate::recipe::{Base, Recipe};

/// SSM's `AWS-RunShellScript` takes at most this many bytes of commands (documents'
/// parameters are limited to 64 KB; stay well inside).
pub const COMMAND_LIMIT: usize = 48 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    pub subnet_id: Option<String>,
    pub instance_profile: String,
    pub instance_type: String,
    pub keep_builder: bool,
    pub force: bool,
    pub copy_to: Vec<String>,
    /// Bound on the provisioning script.
    pub script_timeout: Duration,
    /// Bound on waiting for the SSM agent, the instance to stop and the image.
    pub wait_timeout: Duration,
    /// Poll interval of every wait.
    pub poll: Duration,
    /// The haimg binary staged onto the builder.
    pub binary: PathBuf,
}

/// What the bake made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub image_id: String,
    pub recipe_hash: String,
    pub cached: bool,
    pub region: String,
    pub ami_name: String,
    pub copies: BTreeMap<String, String>,
    pub parameters: Vec<String>,
}

/// Resources that exist only for the bake, or until it completes.
#[derive(Debug, Default, Clone)]
pub struct Created {
    /// This run's id, tagged `haimg:bake-run` on the builder: cleanup finds a builder even
    /// when Ctrl-C came while RunInstances was in flight and its id was never seen.
    pub run_id: Option<String>,
    pub instance: Option<String>,
    /// The image name this run gave CreateImage/CopyImage (unique per region), and the
    /// regions it did so in: on failure every image of that name there is this run's.
    pub image_name: Option<String>,
    pub image_regions: Vec<String>,
    pub bucket: Option<String>,
    pub object: Option<String>,
    /// The script's full log, uploaded by the builder through a presigned PUT URL.
    pub log_object: Option<String>,
    /// Staged image archives and packages.
    pub archive_objects: Vec<String>,
    /// Images (region, id) not yet complete: deregistered with their snapshots on failure.
    pub unfinished_images: Vec<(String, String)>,
    /// The image parameters (same names in every region): cleanup never deregisters an
    /// image one of them points at.
    pub parameters: Vec<String>,
}

pub type Tracker = Arc<Mutex<Created>>;

fn progress(msg: impl std::fmt::Display) {
    crate::progress::line("bake", msg);
}

/// The base AMI id: as pinned, or read from its SSM parameter.
pub async fn resolve_base(sdk: &SdkConfig, recipe: &Recipe) -> Result<String> {
    match &recipe.base {
        None => Err(Error::Usage(format!(
            "recipe {} has no spec.base: it bakes only locally (--target qemu)",
            recipe.name
        ))),
        Some(Base::Ami(id)) => Ok(id.to_string()),
        Some(Base::SsmParameter(p)) => {
            let ssm = aws_sdk_ssm::Client::new(sdk);
            let out = ssm
                .get_parameter()
                .name(p.as_str())
                .send()
                .await
                .map_err(Error::aws(format!(
                    "ssm GetParameter {p} (the recipe's base image)"
                )))?;
            let id = out.parameter().and_then(|p| p.value()).unwrap_or_default();
            crate::contract::types::AmiId::try_from(id)
                .map(|a| a.to_string())
                .map_err(|e| Error::Runtime(format!("base image parameter {p}: {e}")))
        }
    }
}

/// An available image of ours with this recipe hash.
pub async fn find_cached(ec2: &aws_sdk_ec2::Client, hash: &str) -> Result<Option<String>> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(
            ec2t::Filter::builder()
                .name("tag:haimg:recipe-sha256")
                .values(hash)
                .build(),
        )
        .filters(
            ec2t::Filter::builder()
                .name("state")
                .values("available")
                .build(),
        )
        .send()
        .await
        .map_err(Error::aws(format!(
            "ec2 DescribeImages tag:haimg:recipe-sha256={hash}"
        )))?;
    let mut images: Vec<_> = out
        .images()
        .iter()
        .filter_map(|i| Some((i.creation_date()?.to_string(), i.image_id()?.to_string())))
        .collect();
    images.sort();
    Ok(images.pop().map(|(_, id)| id))
}

/// The whole bake after planning. Records what it creates in `created`.
pub async fn run(
    sdk: &SdkConfig,
    plan: &Plan,
    opts: &Options,
    created: Tracker,
) -> Result<Outcome> {
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let total = 8 + usize::from(!opts.copy_to.is_empty());
    let mut n = 0;
    let mut step = |what: &str| {
        n += 1;
        progress(format!("[{n}/{total}] {what}"));
    };

    step(&format!(
        "looking for an image with recipe hash {}",
        plan.short_hash()
    ));
    if !opts.force {
        if let Some(id) = find_cached(&ec2, &plan.recipe_hash).await? {
            progress(format!(
                "{id} already has recipe hash {}: nothing to bake (--force bakes anyway)",
                plan.short_hash()
            ));
            return Ok(Outcome {
                image_id: id,
                recipe_hash: plan.recipe_hash.clone(),
                cached: true,
                region,
                ami_name: plan.ami_name.clone(),
                copies: BTreeMap::new(),
                parameters: plan.parameters().to_vec(),
            });
        }
    }

    let run_id = random_hex::<4>()?;
    created.lock().unwrap().run_id = Some(run_id.clone());
    // Image names are unique per region: a forced rebake of a hash that has an image gets
    // a suffix.
    let mut ami_name = plan.ami_name.clone();
    if opts.force && image_named(&ec2, &ami_name).await?.is_some() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        ami_name = format!("{ami_name}-r{secs}");
        progress(format!(
            "--force: an image named {} exists; this one is {ami_name}",
            plan.ami_name
        ));
    }

    step("staging the haimg binary");
    let staged = stage(sdk, plan, opts, &created).await?;

    step("launching the builder");
    let instance = launch(&ec2, plan, opts, &run_id).await?;
    created.lock().unwrap().instance = Some(instance.clone());
    progress(format!(
        "builder {instance} (no key pair, IMDSv2, tagged haimg:bake={})",
        plan.short_hash()
    ));

    step("running the provisioning script through SSM Run Command");
    let commands = commands(plan, &staged)?;
    run_script(sdk, &instance, commands, opts, &staged).await?;

    step("stopping the builder");
    ec2.stop_instances()
        .instance_ids(&instance)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 StopInstances {instance}")))?;
    wait_instance_state(&ec2, &instance, "stopped", opts).await?;

    step(&format!("creating image {ami_name}"));
    {
        let mut c = created.lock().unwrap();
        c.image_name = Some(ami_name.clone());
        c.image_regions = std::iter::once(region.clone())
            .chain(opts.copy_to.iter().cloned())
            .collect();
    }
    let image = ec2
        .create_image()
        .instance_id(&instance)
        .name(&ami_name)
        .description(format!(
            "haimg recipe {} sha256 {}",
            plan.recipe, plan.recipe_hash
        ))
        .send()
        .await
        .map_err(Error::aws(format!("ec2 CreateImage from {instance}")))?
        .image_id()
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Runtime(format!("CreateImage from {instance} returned no image id"))
        })?;
    created
        .lock()
        .unwrap()
        .unfinished_images
        .push((region.clone(), image.clone()));
    wait_image(&ec2, &image, opts).await?;

    step("tagging the image and its snapshots");
    tag_image(&ec2, &image, &plan.tags).await?;

    let mut copies = BTreeMap::new();
    if !opts.copy_to.is_empty() {
        step(&format!("copying to {}", opts.copy_to.join(", ")));
        copies = copy(sdk, plan, &ami_name, &region, &image, opts, &created).await?;
    }

    // Every region's image is available: only now do the parameters move, all of them
    // or (rolled back) none.
    step("publishing SSM parameters");
    created.lock().unwrap().parameters = plan.parameters().to_vec();
    let mut targets = vec![(region.clone(), image.clone())];
    targets.extend(copies.iter().map(|(r, id)| (r.clone(), id.clone())));
    publish_all(sdk, plan, &targets).await?;
    {
        let mut c = created.lock().unwrap();
        c.unfinished_images.clear();
        c.image_name = None;
    }
    Ok(Outcome {
        image_id: image,
        recipe_hash: plan.recipe_hash.clone(),
        cached: false,
        region,
        ami_name,
        copies,
        parameters: plan.parameters().to_vec(),
    })
}

fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    // Path-style addressing where an endpoint is overridden (S3-compatible servers and
    // emulators have no per-bucket host names).
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// What the builder gets from the staging bucket: the binary (a presigned GET) and a place
/// for the script's whole log (a presigned PUT). SSM keeps only 24,000 characters of stdout
/// and 8,000 of stderr, and nothing while the command runs; the log has it all, as it grows.
/// Neither URL is ever printed: each signature is a credential until it expires.
pub struct Staged {
    pub inputs: super::Inputs,
    pub bucket: String,
    pub log_key: String,
}

/// The staging bucket's key for the provisioning log.
const LOG_KEY: &str = "provision.log";

/// Stages the binary in a bucket of its own (removed with its objects by [`cleanup`]) and
/// presigns its URLs for the length of the bake.
async fn stage(sdk: &SdkConfig, plan: &Plan, opts: &Options, created: &Tracker) -> Result<Staged> {
    let s3 = s3_client(sdk);
    let bucket = format!("haimg-bake-{}-{}", plan.short_hash(), random_hex::<4>()?);
    // Recorded before the call: a bucket created by a request that Ctrl-C interrupted is
    // still removed (deleting one that was never made is not an error).
    created.lock().unwrap().bucket = Some(bucket.clone());
    let mut create = s3.create_bucket().bucket(&bucket);
    if let Some(r) = sdk
        .region()
        .map(|r| r.to_string())
        .filter(|r| r != "us-east-1")
    {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    r.as_str(),
                ))
                .build(),
        );
    }
    create
        .send()
        .await
        .map_err(Error::aws(format!("s3 CreateBucket {bucket}")))?;
    let key = format!("haimg-{}", env!("CARGO_PKG_VERSION"));
    let body = aws_sdk_s3::primitives::ByteStream::from_path(&opts.binary)
        .await
        .map_err(|e| Error::Runtime(format!("reading {}: {e}", opts.binary.display())))?;
    // Recorded first for the same reason as the bucket.
    created.lock().unwrap().object = Some(key.clone());
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .body(body)
        .send()
        .await
        .map_err(Error::aws(format!("s3 PutObject s3://{bucket}/{key}")))?;
    let presigning = aws_sdk_s3::presigning::PresigningConfig::expires_in(
        opts.script_timeout + Duration::from_secs(600),
    )
    .map_err(|e| Error::Runtime(format!("presigning: {e}")))?;
    let req = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .presigned(presigning.clone())
        .await
        .map_err(Error::aws(format!("presigning s3://{bucket}/{key}")))?;
    let mut archive_urls = Vec::new();
    for (i, a) in plan.archives.iter().enumerate() {
        let key = format!("images/{i}-{}.tar", &a.sha256[..12]);
        let what = a.name.to_string();
        archive_urls.push(
            stage_file(
                &s3,
                &bucket,
                &key,
                Local::Path(&a.archive),
                &what,
                &presigning,
                created,
            )
            .await?,
        );
    }
    let apt_key_url = match &plan.apt_mirror {
        Some(m) => Some(
            stage_file(
                &s3,
                &bucket,
                "apt-mirror-key",
                Local::Bytes(&m.key_data),
                "the apt mirror's key",
                &presigning,
                created,
            )
            .await?,
        ),
        None => None,
    };
    let cni_manifest_url = match &plan.cni_manifest {
        Some(data) => Some(
            stage_file(
                &s3,
                &bucket,
                "cni-manifest.yaml",
                Local::Bytes(data),
                "the CNI manifest",
                &presigning,
                created,
            )
            .await?,
        ),
        None => None,
    };
    let mut deb_urls = Vec::new();
    for d in &plan.debs {
        let key = format!("debs/{}_{}.deb", d.package, &d.sha256[..12]);
        let what = format!("{} {}", d.package, d.version);
        deb_urls.push(
            stage_file(
                &s3,
                &bucket,
                &key,
                Local::Path(&d.path),
                &what,
                &presigning,
                created,
            )
            .await?,
        );
    }
    created.lock().unwrap().log_object = Some(LOG_KEY.to_string());
    let log = s3
        .put_object()
        .bucket(&bucket)
        .key(LOG_KEY)
        .content_type("text/plain")
        .presigned(presigning)
        .await
        .map_err(Error::aws(format!("presigning s3://{bucket}/{LOG_KEY}")))?;
    Ok(Staged {
        inputs: super::Inputs {
            binary_url: req.uri().to_string(),
            log_url: Some(log.uri().to_string()),
            archive_urls,
            deb_urls,
            apt_key_url,
            cni_manifest_url,
            recipe_sha256: plan.recipe_hash.clone(),
        },
        bucket,
        log_key: LOG_KEY.to_string(),
    })
}

/// What a staged file is made of: a file on this machine, or bytes the recipe carries.
enum Local<'a> {
    Path(&'a std::path::Path),
    Bytes(&'a [u8]),
}

/// Uploads one file the builder needs (recorded first, so cleanup removes it even when an
/// interrupt cuts the upload short) and presigns its GET.
async fn stage_file(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    local: Local<'_>,
    what: &str,
    presigning: &aws_sdk_s3::presigning::PresigningConfig,
    created: &Tracker,
) -> Result<String> {
    let body = match local {
        Local::Path(path) => aws_sdk_s3::primitives::ByteStream::from_path(path)
            .await
            .map_err(|e| Error::Runtime(format!("reading {}: {e}", path.display())))?,
        Local::Bytes(b) => aws_sdk_s3::primitives::ByteStream::from(b.to_vec()),
    };
    created
        .lock()
        .unwrap()
        .archive_objects
        .push(key.to_string());
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .send()
        .await
        .map_err(Error::aws(format!(
            "s3 PutObject s3://{bucket}/{key} ({what})"
        )))?;
    let url = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(presigning.clone())
        .await
        .map_err(Error::aws(format!("presigning s3://{bucket}/{key}")))?;
    Ok(url.uri().to_string())
}

/// The builder's log so far (empty until its first upload).
async fn read_log(s3: &aws_sdk_s3::Client, staged: &Staged) -> String {
    let got = s3
        .get_object()
        .bucket(&staged.bucket)
        .key(&staged.log_key)
        .send()
        .await;
    match got {
        Ok(o) => match o.body.collect().await {
            Ok(b) => String::from_utf8_lossy(&b.into_bytes()).into_owned(),
            Err(_) => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// `text` with every presigned URL (one carrying an `X-Amz-Signature`, `-Credential` or
/// `-Security-Token` query parameter) replaced by `<presigned URL>`: the script's output is
/// shown on failure, and a signature is a credential until it expires, whatever printed it
/// (a `set -x` trace, a tool's own error message).
pub fn redact_presigned(text: &str) -> String {
    let secret = |url: &str| {
        [
            "X-Amz-Signature=",
            "X-Amz-Credential=",
            "X-Amz-Security-Token=",
        ]
        .iter()
        .any(|k| url.contains(k))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("http") {
        out.push_str(&rest[..i]);
        let url = &rest[i..];
        let end = url
            .find(|c: char| c.is_whitespace() || "'\"<>`()".contains(c))
            .unwrap_or(url.len());
        out.push_str(if secret(&url[..end]) {
            "<presigned URL>"
        } else {
            &url[..end]
        });
        rest = &url[end..];
    }
    out.push_str(rest);
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn launch(
    ec2: &aws_sdk_ec2::Client,
    plan: &Plan,
    opts: &Options,
    run_id: &str,
) -> Result<String> {
    let tags = |rt: ec2t::ResourceType| {
        ec2t::TagSpecification::builder()
            .resource_type(rt)
            .tags(
                ec2t::Tag::builder()
                    .key("Name")
                    .value(format!("haimg-bake-{}", plan.short_hash()))
                    .build(),
            )
            .tags(
                ec2t::Tag::builder()
                    .key("haimg:bake")
                    .value(&plan.recipe_hash)
                    .build(),
            )
            .tags(
                ec2t::Tag::builder()
                    .key("haimg:recipe")
                    .value(&plan.recipe)
                    .build(),
            )
            .tags(
                ec2t::Tag::builder()
                    .key("haimg:bake-run")
                    .value(run_id)
                    .build(),
            )
            .build()
    };
    let mut req = ec2
        .run_instances()
        .image_id(&plan.base_image)
        .instance_type(ec2t::InstanceType::from(opts.instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .iam_instance_profile(
            ec2t::IamInstanceProfileSpecification::builder()
                .name(&opts.instance_profile)
                .build(),
        )
        .metadata_options(
            ec2t::InstanceMetadataOptionsRequest::builder()
                .http_tokens(ec2t::HttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .http_endpoint(ec2t::InstanceMetadataEndpointState::Enabled)
                .build(),
        )
        .block_device_mappings(
            ec2t::BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    ec2t::EbsBlockDevice::builder()
                        .volume_size(20)
                        .volume_type(ec2t::VolumeType::Gp3)
                        .encrypted(true)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .instance_initiated_shutdown_behavior(ec2t::ShutdownBehavior::Stop)
        .tag_specifications(tags(ec2t::ResourceType::Instance))
        .tag_specifications(tags(ec2t::ResourceType::Volume));
    if let Some(s) = &opts.subnet_id {
        req = req.subnet_id(s);
    }
    let out = req.send().await.map_err(Error::aws(format!(
        "ec2 RunInstances (builder from {})",
        plan.base_image
    )))?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_string)
        .ok_or_else(|| Error::Runtime("RunInstances returned no instance".into()))
}

/// The Run Command lines: run-time inputs, then the script, gzipped and base64-encoded so
/// it fits the parameter limit and passes through unchanged.
pub fn commands(plan: &Plan, staged: &Staged) -> Result<Vec<String>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(plan.script.as_bytes())
        .expect("writing to memory");
    let packed =
        base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip to memory"));
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut lines = vec!["set -eu".to_string()];
    for (var, value) in staged.inputs.env() {
        lines.push(format!("export {var}={}", q(&value)));
    }
    lines.extend([
        format!("echo {packed} | base64 -d | gunzip > /root/haimg-provision.sh"),
        "exec bash /root/haimg-provision.sh".to_string(),
    ]);
    let size: usize = lines.iter().map(|l| l.len() + 1).sum();
    if size > COMMAND_LIMIT {
        return Err(Error::Runtime(format!("the packed provisioning script is {size} bytes; SSM Run Command takes at most {COMMAND_LIMIT}")));
    }
    Ok(lines)
}

async fn run_script(
    sdk: &SdkConfig,
    instance: &str,
    commands: Vec<String>,
    opts: &Options,
    staged: &Staged,
) -> Result<()> {
    let ssm = aws_sdk_ssm::Client::new(sdk);
    let s3 = s3_client(sdk);
    // The SSM agent registers a minute or so after boot: SendCommand answers
    // InvalidInstanceId until then (the real-world way to wait for it).
    let deadline = Instant::now() + opts.wait_timeout;
    let command_id = loop {
        let sent = ssm
            .send_command()
            .instance_ids(instance)
            .document_name("AWS-RunShellScript")
            .comment("haimg bake")
            .timeout_seconds(600)
            .parameters("commands", commands.clone())
            .parameters(
                "executionTimeout",
                vec![opts.script_timeout.as_secs().to_string()],
            )
            .send()
            .await;
        match sent {
            Ok(out) => {
                break out
                    .command()
                    .and_then(|c| c.command_id())
                    .map(str::to_string)
                    .ok_or_else(|| Error::Runtime("SendCommand returned no command id".into()))?
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_instance_id())
                    && Instant::now() < deadline =>
            {
                progress(format!("waiting for the SSM agent on {instance}"));
                tokio::time::sleep(opts.poll).await;
            }
            Err(e) => return Err(Error::aws(format!("ssm SendCommand to {instance}"))(e)),
        }
    };
    progress(format!("command {command_id} sent to {instance}"));
    let deadline = Instant::now() + opts.script_timeout;
    let mut shown = 0usize;
    loop {
        let inv = ssm
            .get_command_invocation()
            .command_id(&command_id)
            .instance_id(instance)
            .send()
            .await;
        let inv = match inv {
            Ok(i) => i,
            // Right after SendCommand the invocation may not exist yet.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invocation_does_not_exist()) =>
            {
                tokio::time::sleep(opts.poll).await;
                continue;
            }
            Err(e) => {
                return Err(Error::aws(format!(
                    "ssm GetCommandInvocation {command_id} on {instance}"
                ))(e))
            }
        };
        // Progress from the builder's own log as it grows; SSM's copy only at the end,
        // and only when there is no log (an upload that never worked).
        let log = read_log(&s3, staged).await;
        let out = if log.is_empty() {
            inv.standard_output_content()
                .unwrap_or_default()
                .to_string()
        } else {
            log.clone()
        };
        if out.len() > shown && out.is_char_boundary(shown) {
            for line in out[shown..].lines() {
                if line.starts_with("==> ") {
                    progress(format!("builder {}", line.trim_start_matches("==> ")));
                }
            }
            shown = out.len();
        }
        use aws_sdk_ssm::types::CommandInvocationStatus as S;
        match inv.status() {
            Some(S::Success) => return Ok(()),
            Some(S::Pending | S::InProgress | S::Delayed) | None => {}
            Some(other) => {
                // The builder uploads its log once more as the script exits.
                let log = read_log(&s3, staged).await;
                let (source, text) = if log.is_empty() {
                    (
                        "SSM's stderr (no log was uploaded)",
                        inv.standard_error_content().unwrap_or_default().to_string(),
                    )
                } else {
                    ("the end of its log", log)
                };
                let failed_step = text
                    .lines()
                    .rfind(|l| l.starts_with("==> "))
                    .map(|l| format!(" in step {}", l.trim_start_matches("==> ")))
                    .unwrap_or_default();
                return Err(Error::Runtime(format!(
                    "the provisioning script ended {} (exit {}) on {instance}{failed_step}; {source}:\n{}",
                    other.as_str(),
                    inv.response_code(),
                    redact_presigned(&tail(&text, 40))
                )));
            }
        }
        if Instant::now() >= deadline {
            let _ = ssm
                .cancel_command()
                .command_id(&command_id)
                .instance_ids(instance)
                .send()
                .await;
            return Err(Error::Timeout(format!(
                "the provisioning script did not finish within {}s on {instance} (command {command_id} cancelled)",
                opts.script_timeout.as_secs()
            )));
        }
        tokio::time::sleep(opts.poll).await;
    }
}

async fn wait_until<F, Fut>(opts: &Options, what: &str, probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>>>,
{
    crate::aws::wait_until(opts.wait_timeout, opts.poll, what, probe).await
}

async fn wait_instance_state(
    ec2: &aws_sdk_ec2::Client,
    instance: &str,
    want: &str,
    opts: &Options,
) -> Result<()> {
    wait_until(
        opts,
        &format!("{instance} (waiting for {want})"),
        || async {
            let out = ec2
                .describe_instances()
                .instance_ids(instance)
                .send()
                .await
                .map_err(Error::aws(format!("ec2 DescribeInstances {instance}")))?;
            let state = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| {
                    i.state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                })
                .unwrap_or_else(|| "unknown".into());
            Ok((state != want).then_some(state))
        },
    )
    .await
}

async fn wait_image(ec2: &aws_sdk_ec2::Client, image: &str, opts: &Options) -> Result<()> {
    wait_until(opts, &format!("image {image}"), || async {
        let out = ec2
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(Error::aws(format!("ec2 DescribeImages {image}")))?;
        let state = out
            .images()
            .first()
            .and_then(|i| i.state())
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "unknown".into());
        match state.as_str() {
            "available" => Ok(None),
            "failed" | "error" | "invalid" | "deregistered" => {
                Err(Error::Runtime(format!("image {image} is {state}")))
            }
            _ => Ok(Some(state)),
        }
    })
    .await
}

/// The id of this account's image named `name`, if any.
async fn image_named(ec2: &aws_sdk_ec2::Client, name: &str) -> Result<Option<String>> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(ec2t::Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DescribeImages name={name}")))?;
    Ok(out
        .images()
        .first()
        .and_then(|i| i.image_id())
        .map(str::to_string))
}

fn random_hex<const N: usize>() -> Result<String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Runtime(format!("random: {e}")))?;
    Ok(hex::encode(b))
}

async fn snapshots_of(ec2: &aws_sdk_ec2::Client, image: &str) -> Result<Vec<String>> {
    let out = ec2
        .describe_images()
        .image_ids(image)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DescribeImages {image}")))?;
    Ok(out
        .images()
        .iter()
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect())
}

async fn tag_image(
    ec2: &aws_sdk_ec2::Client,
    image: &str,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    let mut ids = vec![image.to_string()];
    ids.extend(snapshots_of(ec2, image).await?);
    let mut req = ec2.create_tags().set_resources(Some(ids.clone()));
    for (k, v) in tags {
        req = req.tags(ec2t::Tag::builder().key(k).value(v).build());
    }
    req.send()
        .await
        .map_err(Error::aws(format!("ec2 CreateTags on {}", ids.join(", "))))?;
    Ok(())
}

/// Copies the image to every region at once; each copy is tagged like the original.
#[allow(clippy::too_many_arguments)]
async fn copy(
    sdk: &SdkConfig,
    plan: &Plan,
    ami_name: &str,
    source_region: &str,
    image: &str,
    opts: &Options,
    created: &Tracker,
) -> Result<BTreeMap<String, String>> {
    let mut set = tokio::task::JoinSet::new();
    for r in &opts.copy_to {
        let cfg = sdk
            .to_builder()
            .region(aws_config::Region::new(r.clone()))
            .build();
        let (name, r, plan, src, image, opts, created) = (
            ami_name.to_string(),
            r.clone(),
            plan.clone(),
            source_region.to_string(),
            image.to_string(),
            opts.clone(),
            created.clone(),
        );
        set.spawn(async move {
            let ec2 = aws_sdk_ec2::Client::new(&cfg);
            let id = ec2
                .copy_image()
                .source_region(&src)
                .source_image_id(&image)
                .name(&name)
                .description(format!(
                    "haimg recipe {} sha256 {} (copy of {src}/{image})",
                    plan.recipe, plan.recipe_hash
                ))
                .send()
                .await
                .map_err(Error::aws(format!("ec2 CopyImage {src}/{image} to {r}")))?
                .image_id()
                .map(str::to_string)
                .ok_or_else(|| Error::Runtime(format!("CopyImage to {r} returned no image id")))?;
            created
                .lock()
                .unwrap()
                .unfinished_images
                .push((r.clone(), id.clone()));
            wait_image(&ec2, &id, &opts).await?;
            tag_image(&ec2, &id, &plan.tags).await?;
            progress(format!("{r}: {id}"));
            Ok::<_, Error>((r, id))
        });
    }
    let mut out = BTreeMap::new();
    while let Some(res) = set.join_next().await {
        let (r, id) = res.map_err(|e| Error::Runtime(format!("copy task: {e}")))??;
        out.insert(r, id);
    }
    Ok(out)
}

/// Points the recipe's parameters at the new image in every region. If any write fails,
/// the ones already made are put back as they were (or deleted where there was none), so
/// no parameter is left pointing at an image that cleanup is about to deregister.
async fn publish_all(sdk: &SdkConfig, plan: &Plan, images: &[(String, String)]) -> Result<()> {
    let mut done: Vec<(aws_sdk_ssm::Client, String, Option<String>)> = Vec::new();
    let mut failed = None;
    'regions: for (region, image) in images {
        let ssm = ssm_in(sdk, region);
        for name in plan.parameters() {
            let before = match parameter_value(&ssm, &name).await {
                Ok(v) => v,
                Err(e) => {
                    failed = Some(e);
                    break 'regions;
                }
            };
            if let Err(e) = put_image_parameter(&ssm, plan, &name, image).await {
                failed = Some(Error::Runtime(format!("{region}: {e}")));
                break 'regions;
            }
            done.push((ssm.clone(), name.to_string(), before));
        }
    }
    let Some(e) = failed else { return Ok(()) };
    for (ssm, name, before) in done.into_iter().rev() {
        let undone = match &before {
            Some(v) => put_image_parameter(&ssm, plan, &name, v).await,
            None => ssm
                .delete_parameter()
                .name(&name)
                .send()
                .await
                .map(|_| ())
                .map_err(Error::aws(format!("ssm DeleteParameter {name}"))),
        };
        match undone {
            Ok(()) => progress(format!(
                "put {name} back to {}",
                before.as_deref().unwrap_or("(none)")
            )),
            Err(e) => progress(format!("could not put {name} back: {e}")),
        }
    }
    Err(e)
}

fn ssm_in(sdk: &SdkConfig, region: &str) -> aws_sdk_ssm::Client {
    let cfg = sdk
        .to_builder()
        .region(aws_config::Region::new(region.to_string()))
        .build();
    aws_sdk_ssm::Client::new(&cfg)
}

async fn parameter_value(ssm: &aws_sdk_ssm::Client, name: &str) -> Result<Option<String>> {
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(format!("ssm GetParameter {name}"))(e)),
    }
}

async fn put_image_parameter(
    ssm: &aws_sdk_ssm::Client,
    plan: &Plan,
    name: &str,
    image: &str,
) -> Result<()> {
    ssm.put_parameter()
        .name(name)
        .value(image)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .description(format!(
            "haimg image, recipe {} sha256 {}",
            plan.recipe,
            plan.short_hash()
        ))
        .overwrite(true)
        .send()
        .await
        .map_err(Error::aws(format!("ssm PutParameter {name}")))?;
    Ok(())
}

/// Removes what the bake created and does not keep. Best effort per resource, every
/// resource attempted; returns what could not be removed.
pub async fn cleanup(sdk: &SdkConfig, created: &Created, keep_builder: bool) -> Vec<String> {
    let mut left = Vec::new();
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    // The recorded builder, and any other instance tagged with this run (one launched by a
    // RunInstances that an interrupt cut short).
    let mut builders: Vec<String> = created.instance.iter().cloned().collect();
    if let Some(run) = &created.run_id {
        match ec2
            .describe_instances()
            .filters(
                ec2t::Filter::builder()
                    .name("tag:haimg:bake-run")
                    .values(run)
                    .build(),
            )
            .filters(
                ec2t::Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(
                        ["pending", "running", "stopping", "stopped"]
                            .map(String::from)
                            .to_vec(),
                    ))
                    .build(),
            )
            .send()
            .await
        {
            Ok(out) => builders.extend(
                out.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(|i| i.instance_id().map(str::to_string)),
            ),
            Err(e) => left.push(format!(
                "looking up builders tagged haimg:bake-run={run}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            )),
        }
    }
    builders.sort();
    builders.dedup();
    for i in &builders {
        if keep_builder {
            progress(format!(
                "keeping builder {i} (--keep-builder): terminate it yourself"
            ));
            continue;
        }
        match ec2.terminate_instances().instance_ids(i).send().await {
            Ok(_) => progress(format!("terminated builder {i}")),
            Err(e) => left.push(format!(
                "builder instance {i}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            )),
        }
    }
    // Unfinished images: the recorded ids, and any image this run named (a CreateImage or
    // CopyImage that an interrupt cut short).
    let mut images = created.unfinished_images.clone();
    if let Some(name) = &created.image_name {
        for region in &created.image_regions {
            let cfg = sdk
                .to_builder()
                .region(aws_config::Region::new(region.clone()))
                .build();
            match image_named(&aws_sdk_ec2::Client::new(&cfg), name).await {
                Ok(Some(id)) => images.push((region.clone(), id)),
                Ok(None) => {}
                Err(e) => left.push(format!("looking up image {region}/{name}: {e}")),
            }
        }
    }
    images.sort();
    images.dedup();
    for (region, image) in &images {
        let cfg = sdk
            .to_builder()
            .region(aws_config::Region::new(region.clone()))
            .build();
        let ec2 = aws_sdk_ec2::Client::new(&cfg);
        // Never an image a parameter points at (a rollback that failed, a parameter set by
        // hand): nodes launch from it.
        let ssm = aws_sdk_ssm::Client::new(&cfg);
        let mut pointed = None;
        for name in &created.parameters {
            match parameter_value(&ssm, name).await {
                Ok(Some(v)) if v == *image => pointed = Some(name.clone()),
                Ok(_) => {}
                Err(e) => {
                    pointed = Some(name.clone());
                    left.push(format!(
                        "image {region}/{image} kept: could not read {name}: {e}"
                    ));
                }
            }
        }
        if let Some(name) = pointed {
            progress(format!(
                "keeping image {region}/{image}: {name} points at it"
            ));
            continue;
        }
        let snaps = snapshots_of(&ec2, image).await.unwrap_or_default();
        match ec2.deregister_image().image_id(image).send().await {
            Ok(_) => progress(format!("deregistered unfinished image {region}/{image}")),
            Err(e) => left.push(format!(
                "image {region}/{image}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            )),
        }
        for s in snaps {
            if let Err(e) = ec2.delete_snapshot().snapshot_id(&s).send().await {
                left.push(format!(
                    "snapshot {region}/{s}: {}",
                    aws_sdk_ec2::error::DisplayErrorContext(&e)
                ));
            }
        }
    }
    if let Some(b) = &created.bucket {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        let s3 = s3_client(sdk);
        // S3 has no typed variant for it on these calls: its error code says so.
        let gone = |code: Option<&str>| code == Some("NoSuchBucket");
        for k in created
            .object
            .iter()
            .chain(created.log_object.iter())
            .chain(created.archive_objects.iter())
        {
            if let Err(e) = s3.delete_object().bucket(b).key(k).send().await {
                if !gone(e.code()) {
                    left.push(format!(
                        "staged object s3://{b}/{k}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ));
                }
            }
        }
        match s3.delete_bucket().bucket(b).send().await {
            Ok(_) => progress(format!("removed staging bucket {b}")),
            Err(e) if gone(e.code()) => {}
            Err(e) => left.push(format!(
                "staging bucket {b}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
        }
    }
    left
}

#[cfg(test)]
mod tests {
    #[test]
    fn presigned_urls_are_redacted_wherever_they_appear() {
        let url = "https://haimg-bake-1.s3.us-west-2.amazonaws.com/haimg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&X-Amz-Signature=0123abcd";
        let text = format!(
            "+ curl -fsSL {url} -o /x\ncurl: (22) '{url}': 403\nsee https://example.com/docs.\n"
        );
        let r = super::redact_presigned(&text);
        assert!(!r.contains("X-Amz") && !r.contains("0123abcd"), "{r}");
        assert_eq!(r.matches("<presigned URL>").count(), 2, "{r}");
        assert!(r.contains("see https://example.com/docs."), "{r}");
        assert_eq!(super::redact_presigned("no urls here"), "no urls here");
    }
}
