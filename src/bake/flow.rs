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

use base64::Engine;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;

use super::Plan;
use crate::aws::s3::{self, Body};
use crate::aws::{ec2, ssm};
use crate::contract::artifacts::Tag;
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
            let client = aws_sdk_ssm::Client::new(sdk);
            let id = ssm::get(&client, p.as_str()).await?.ok_or_else(|| {
                Error::Runtime(format!(
                    "the recipe's base image parameter {p} does not exist in this region"
                ))
            })?;
            crate::contract::types::AmiId::try_from(id.as_str())
                .map(|a| a.to_string())
                .map_err(|e| Error::Runtime(format!("base image parameter {p}: {e}")))
        }
    }
}

/// An available image of ours with this recipe hash.
pub async fn find_cached(ec2: &aws_sdk_ec2::Client, hash: &str) -> Result<Option<String>> {
    ec2::newest_image_tagged(ec2, "haimg:recipe-sha256", hash).await
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
    let ami_name = image_name(&ec2, plan, opts).await?;

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
    ec2::stop(&ec2, &instance).await?;
    ec2::wait_stopped(&ec2, &instance, opts.wait_timeout).await?;

    step(&format!("creating image {ami_name}"));
    let image = make_image(&ec2, plan, opts, &instance, &ami_name, &region, &created).await?;

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
    let s3 = s3::client(sdk);
    let bucket = format!("haimg-bake-{}-{}", plan.short_hash(), random_hex::<4>()?);
    // Recorded before the call: a bucket created by a request that Ctrl-C interrupted is
    // still removed (deleting one that was never made is not an error).
    created.lock().unwrap().bucket = Some(bucket.clone());
    s3::create_bucket(&s3, &bucket, sdk.region().map(|r| r.as_ref())).await?;
    let key = format!("haimg-{}", env!("CARGO_PKG_VERSION"));
    // Recorded first for the same reason as the bucket.
    created.lock().unwrap().object = Some(key.clone());
    s3::put(&s3, &bucket, &key, Body::Path(&opts.binary), "the agent").await?;
    // Valid for the whole script and its retries of the last uploads.
    let presigning = s3::presigning(opts.script_timeout + Duration::from_secs(600))?;
    let binary_url = s3::presign_get(&s3, &bucket, &key, &presigning).await?;
    let mut archive_urls = Vec::new();
    for (i, a) in plan.archives.iter().enumerate() {
        let key = format!("images/{i}-{}.tar", &a.sha256[..12]);
        let what = a.name.to_string();
        archive_urls.push(
            stage_file(
                &s3,
                &bucket,
                &key,
                Body::Path(&a.archive),
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
                Body::Bytes(&m.key_data),
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
                Body::Bytes(data),
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
                Body::Path(&d.path),
                &what,
                &presigning,
                created,
            )
            .await?,
        );
    }
    created.lock().unwrap().log_object = Some(LOG_KEY.to_string());
    let log_url = s3::presign_put_text(&s3, &bucket, LOG_KEY, &presigning).await?;
    Ok(Staged {
        inputs: super::Inputs {
            binary_url,
            log_url: Some(log_url),
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

/// Uploads one file the builder needs (recorded first, so cleanup removes it even when an
/// interrupt cuts the upload short) and presigns its GET.
async fn stage_file(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: Body<'_>,
    what: &str,
    presigning: &s3::PresigningConfig,
    created: &Tracker,
) -> Result<String> {
    created
        .lock()
        .unwrap()
        .archive_objects
        .push(key.to_string());
    s3::put(c, bucket, key, body, what).await?;
    s3::presign_get(c, bucket, key, presigning).await
}

/// The builder's log so far (empty until its first upload).
async fn read_log(c: &aws_sdk_s3::Client, staged: &Staged) -> String {
    s3::text_or_empty(c, &staged.bucket, &staged.log_key).await
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
    c: &aws_sdk_ec2::Client,
    plan: &Plan,
    opts: &Options,
    run_id: &str,
) -> Result<String> {
    let tag = |key: &str, value: &str| Tag {
        key: key.into(),
        value: value.into(),
    };
    ec2::run_builder(
        c,
        &ec2::Builder {
            image_id: &plan.base_image,
            instance_type: &opts.instance_type,
            instance_profile: &opts.instance_profile,
            subnet_id: opts.subnet_id.as_deref(),
            tags: vec![
                tag("Name", &format!("haimg-bake-{}", plan.short_hash())),
                tag("haimg:bake", &plan.recipe_hash),
                tag("haimg:recipe", &plan.recipe),
                tag("haimg:bake-run", run_id),
            ],
        },
    )
    .await
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
    let client = aws_sdk_ssm::Client::new(sdk);
    let s3 = s3::client(sdk);
    // The SSM agent registers a minute or so after boot: SendCommand answers
    // InvalidInstanceId until then (the real-world way to wait for it).
    let deadline = Instant::now() + opts.wait_timeout;
    let command_id = loop {
        match ssm::run_shell_script(&client, instance, &commands, opts.script_timeout).await? {
            ssm::Sent::Command(id) => break id,
            ssm::Sent::AgentNotReady if Instant::now() < deadline => {
                progress(format!("waiting for the SSM agent on {instance}"));
                tokio::time::sleep(opts.poll).await;
            }
            ssm::Sent::AgentNotReady => {
                return Err(Error::Timeout(format!(
                    "the SSM agent on {instance} did not register within {}s (SendCommand: InvalidInstanceId); is the instance profile's role allowed AmazonSSMManagedInstanceCore?",
                    opts.wait_timeout.as_secs()
                )))
            }
        }
    };
    progress(format!("command {command_id} sent to {instance}"));
    let deadline = Instant::now() + opts.script_timeout;
    let mut shown = 0usize;
    loop {
        // Right after SendCommand the invocation may not exist yet.
        let Some(inv) = ssm::invocation(&client, &command_id, instance).await? else {
            tokio::time::sleep(opts.poll).await;
            continue;
        };
        // Progress from the builder's own log as it grows; SSM's copy only at the end,
        // and only when there is no log (an upload that never worked).
        let log = read_log(&s3, staged).await;
        let out = if log.is_empty() { &inv.stdout } else { &log };
        if out.len() > shown && out.is_char_boundary(shown) {
            for line in out[shown..].lines() {
                if line.starts_with("==> ") {
                    progress(format!("builder {}", line.trim_start_matches("==> ")));
                }
            }
            shown = out.len();
        }
        match &inv.status {
            ssm::CommandStatus::Success => return Ok(()),
            ssm::CommandStatus::Running => {}
            ssm::CommandStatus::Ended(how) => {
                // The builder uploads its log once more as the script exits.
                let log = read_log(&s3, staged).await;
                let (source, text) = if log.is_empty() {
                    ("SSM's stderr (no log was uploaded)", inv.stderr.clone())
                } else {
                    ("the end of its log", log)
                };
                let failed_step = text
                    .lines()
                    .rfind(|l| l.starts_with("==> "))
                    .map(|l| format!(" in step {}", l.trim_start_matches("==> ")))
                    .unwrap_or_default();
                return Err(Error::Runtime(format!(
                    "the provisioning script ended {how} (exit {}) on {instance}{failed_step}; {source}:\n{}",
                    inv.exit_code,
                    redact_presigned(&tail(&text, 40))
                )));
            }
        }
        if Instant::now() >= deadline {
            ssm::cancel(&client, &command_id, instance).await;
            return Err(Error::Timeout(format!(
                "the provisioning script did not finish within {}s on {instance} (command {command_id} cancelled)",
                opts.script_timeout.as_secs()
            )));
        }
        tokio::time::sleep(opts.poll).await;
    }
}

fn random_hex<const N: usize>() -> Result<String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Runtime(format!("random: {e}")))?;
    Ok(hex::encode(b))
}

/// The image's name: the plan's, unless `--force` rebakes a hash that has an image (names
/// are unique per region): then with a suffix.
async fn image_name(c: &aws_sdk_ec2::Client, plan: &Plan, opts: &Options) -> Result<String> {
    let name = &plan.ami_name;
    if !(opts.force && ec2::image_named(c, name).await?.is_some()) {
        return Ok(name.clone());
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let unique = format!("{name}-r{secs}");
    progress(format!(
        "--force: an image named {name} exists; this one is {unique}"
    ));
    Ok(unique)
}

/// Images the stopped builder and waits for the image; recorded (by name before the call,
/// by id after) so cleanup removes an unfinished one.
async fn make_image(
    c: &aws_sdk_ec2::Client,
    plan: &Plan,
    opts: &Options,
    instance: &str,
    ami_name: &str,
    region: &str,
    created: &Tracker,
) -> Result<String> {
    {
        let mut t = created.lock().unwrap();
        t.image_name = Some(ami_name.to_string());
        t.image_regions = std::iter::once(region.to_string())
            .chain(opts.copy_to.iter().cloned())
            .collect();
    }
    let description = format!("haimg recipe {} sha256 {}", plan.recipe, plan.recipe_hash);
    let image = ec2::create_image(c, instance, ami_name, &description).await?;
    created
        .lock()
        .unwrap()
        .unfinished_images
        .push((region.to_string(), image.clone()));
    ec2::wait_image_available(c, &image, opts.wait_timeout).await?;
    Ok(image)
}

/// Tags the image and its snapshots.
async fn tag_image(
    c: &aws_sdk_ec2::Client,
    image: &str,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    let mut ids = vec![image.to_string()];
    ids.extend(ec2::snapshots_of(c, image).await?);
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    ec2::tag(c, &ids, &tags).await
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
        let cfg = in_region(sdk, r);
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
            let client = aws_sdk_ec2::Client::new(&cfg);
            let description = format!(
                "haimg recipe {} sha256 {} (copy of {src}/{image})",
                plan.recipe, plan.recipe_hash
            );
            let id = ec2::copy_image(&client, &src, &image, &name, &description).await?;
            created
                .lock()
                .unwrap()
                .unfinished_images
                .push((r.clone(), id.clone()));
            ec2::wait_image_available(&client, &id, opts.wait_timeout).await?;
            tag_image(&client, &id, &plan.tags).await?;
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
        let client = ssm_in(sdk, region);
        for name in plan.parameters() {
            let before = match ssm::get(&client, &name).await {
                Ok(v) => v,
                Err(e) => {
                    failed = Some(e);
                    break 'regions;
                }
            };
            if let Err(e) = put_image_parameter(&client, plan, &name, image).await {
                failed = Some(Error::Runtime(format!("{region}: {e}")));
                break 'regions;
            }
            done.push((client.clone(), name.to_string(), before));
        }
    }
    let Some(e) = failed else { return Ok(()) };
    for (client, name, before) in done.into_iter().rev() {
        let undone = match &before {
            Some(v) => put_image_parameter(&client, plan, &name, v).await,
            None => ssm::delete_one(&client, &name).await,
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
    aws_sdk_ssm::Client::new(&in_region(sdk, region))
}

async fn put_image_parameter(
    c: &aws_sdk_ssm::Client,
    plan: &Plan,
    name: &str,
    image: &str,
) -> Result<()> {
    let description = format!(
        "haimg image, recipe {} sha256 {}",
        plan.recipe,
        plan.short_hash()
    );
    ssm::put_string(c, name, image, &description).await
}

/// Removes what the bake created and does not keep. Best effort per resource, every
/// resource attempted; returns what could not be removed.
pub async fn cleanup(sdk: &SdkConfig, created: &Created, keep_builder: bool) -> Vec<String> {
    let mut left = Vec::new();
    remove_builders(sdk, created, keep_builder, &mut left).await;
    remove_unfinished_images(sdk, created, &mut left).await;
    if let Some(b) = &created.bucket {
        let keys: Vec<String> = created
            .object
            .iter()
            .chain(created.log_object.iter())
            .chain(created.archive_objects.iter())
            .cloned()
            .collect();
        let (not_removed, removed) = s3::delete_bucket_with(&s3::client(sdk), b, &keys).await;
        if removed {
            progress(format!("removed staging bucket {b}"));
        }
        left.extend(not_removed);
    }
    left
}

/// The recorded builder, and any other instance tagged with this run (one launched by a
/// RunInstances that an interrupt cut short), terminated unless `keep_builder`.
async fn remove_builders(
    sdk: &SdkConfig,
    created: &Created,
    keep_builder: bool,
    left: &mut Vec<String>,
) {
    let client = aws_sdk_ec2::Client::new(sdk);
    let mut builders: Vec<String> = created.instance.iter().cloned().collect();
    if let Some(run) = &created.run_id {
        match ec2::live_instances_tagged(&client, "haimg:bake-run", run).await {
            Ok(ids) => builders.extend(ids),
            Err(e) => left.push(format!(
                "looking up builders tagged haimg:bake-run={run}: {e}"
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
        match ec2::terminate(&client, i).await {
            Ok(()) => progress(format!("terminated builder {i}")),
            Err(e) => left.push(format!("builder instance {i}: {e}")),
        }
    }
}

/// The SDK configuration for another region.
fn in_region(sdk: &SdkConfig, region: &str) -> SdkConfig {
    sdk.to_builder()
        .region(aws_config::Region::new(region.to_string()))
        .build()
}

/// Unfinished images (the recorded ids, and any image this run named: a CreateImage or
/// CopyImage that an interrupt cut short) deregistered with their snapshots; never one a
/// parameter points at (a rollback that failed, a parameter set by hand): nodes launch
/// from it.
async fn remove_unfinished_images(sdk: &SdkConfig, created: &Created, left: &mut Vec<String>) {
    let mut images = created.unfinished_images.clone();
    if let Some(name) = &created.image_name {
        for region in &created.image_regions {
            let client = aws_sdk_ec2::Client::new(&in_region(sdk, region));
            match ec2::image_named(&client, name).await {
                Ok(Some(id)) => images.push((region.clone(), id)),
                Ok(None) => {}
                Err(e) => left.push(format!("looking up image {region}/{name}: {e}")),
            }
        }
    }
    images.sort();
    images.dedup();
    for (region, image) in &images {
        let cfg = in_region(sdk, region);
        let client = aws_sdk_ec2::Client::new(&cfg);
        let parameters = aws_sdk_ssm::Client::new(&cfg);
        let mut pointed = None;
        for name in &created.parameters {
            match ssm::get(&parameters, name).await {
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
        let snaps = ec2::snapshots_of(&client, image).await.unwrap_or_default();
        match ec2::deregister_image(&client, image).await {
            Ok(()) => progress(format!("deregistered unfinished image {region}/{image}")),
            Err(e) => left.push(format!("image {region}/{image}: {e}")),
        }
        for s in snaps {
            if let Err(e) = ec2::delete_snapshot(&client, &s).await {
                left.push(format!("snapshot {region}/{s}: {e}"));
            }
        }
    }
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
