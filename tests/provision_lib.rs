//! The provisioning script's helpers (`image-recipes/provision-lib.sh`), each run for real:
//! pins checked by apt-cache against a local apt repository, image completeness by ctr
//! against a real containerd, and what the rendered scripts call through them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::containerd::Containerd;
use common::*;

fn lib() -> PathBuf {
    repo().join("image-recipes/provision-lib.sh")
}

/// `bash -c 'source provision-lib.sh; <body>'` with `env`.
fn bash(body: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(require_tool("bash"));
    c.arg("-c")
        .arg(format!(
            "set -euo pipefail; source {}; {body}",
            lib().display()
        ))
        .envs(env.iter().copied());
    run(c)
}

/// A local apt repository (what a mirror serves), and an apt configuration that sees only
/// it: `APT_CONFIG` points apt-get and apt-cache at it, nothing of the machine's apt is used.
fn local_repo(dir: &Path, packages: &[(&str, &str)]) -> PathBuf {
    for d in [
        "repo",
        "lists/partial",
        "cache/archives/partial",
        "parts",
        "prefs",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let stanzas: Vec<String> = packages
        .iter()
        .map(|(p, v)| {
            format!("Package: {p}\nVersion: {v}\nArchitecture: all\nFilename: ./{p}_{v}_all.deb\nSize: 1\nDescription: test\n")
        })
        .collect();
    std::fs::write(dir.join("repo/Packages"), stanzas.join("\n")).unwrap();
    std::fs::write(
        dir.join("sources.list"),
        format!("deb [trusted=yes] file:{} ./\n", dir.join("repo").display()),
    )
    .unwrap();
    std::fs::write(dir.join("status"), "").unwrap();
    let d = dir.display();
    let conf = dir.join("apt.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\nDir::Etc::SourceParts \"{d}/parts\";\n\
             Dir::Etc::PreferencesParts \"{d}/prefs\";\nDir::State::Lists \"{d}/lists\";\n\
             Dir::Cache \"{d}/cache\";\nDir::State::status \"{d}/status\";\nDebug::NoLocking \"true\";\n"
        ),
    )
    .unwrap();
    let o = run({
        let mut c = Command::new(require_tool("apt-get"));
        c.args(["update", "-q"]).env("APT_CONFIG", &conf);
        c
    });
    assert!(o.status.success(), "apt-get update: {}", stderr(&o));
    conf
}

#[test]
fn a_pin_missing_from_the_sources_fails_at_once_naming_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let conf = local_repo(
        dir.path(),
        &[
            ("keepalived", "1:2.0.19-2ubuntu0.1"),
            ("keepalived", "1:2.0.19-2ubuntu0.2"),
            ("haproxy", "2.0.33-0ubuntu0.1"),
        ],
    );
    let env = [
        ("APT_CONFIG", conf.to_str().unwrap()),
        ("APT_SNAPSHOT", "20241101T000000Z"),
    ];
    let ok = bash(
        "check_pins_available keepalived=1:2.0.19-2ubuntu0.2 haproxy=2.0.33-0ubuntu0.1; echo all-there",
        &env,
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), "all-there\n");

    let o = bash(
        "check_pins_available keepalived=1:2.0.19-2ubuntu0.3 haproxy=2.0.33-0ubuntu0.1 containerd=1.7.12; echo never",
        &env,
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "", "nothing runs after a missing pin");
    let err = stderr(&o);
    assert!(
        err.contains("keepalived 1:2.0.19-2ubuntu0.3 is not available from the configured sources (available: 1:2.0.19-2ubuntu0.1,1:2.0.19-2ubuntu0.2; apt snapshot: 20241101T000000Z)"),
        "{err}"
    );
    assert!(
        err.contains(
            "containerd 1.7.12 is not available from the configured sources (available: none;"
        ),
        "{err}"
    );
    assert!(
        !err.contains("haproxy"),
        "a pin that is there is not reported: {err}"
    );
}

#[test]
fn retry_never_prints_the_arguments_of_a_failed_attempt() {
    // Arguments can be a presigned URL: its signature is a credential.
    let o = bash(
        "sleep() { :; }; retry false 'https://bucket.s3.amazonaws.com/haimg?X-Amz-Signature=deadbeef' || echo gave-up",
        &[],
    );
    assert_eq!(stdout(&o), "gave-up\n");
    let err = stderr(&o);
    assert_eq!(err.matches("attempt ").count(), 5, "{err}");
    assert!(err.contains("attempt 1 of false failed"), "{err}");
    assert!(!err.contains("X-Amz-Signature"), "{err}");
}

#[test]
fn a_failing_download_of_the_staged_binary_prints_no_url() {
    // A server that refuses every request, as S3 does an expired signature.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    // The script's own download line, as rendered.
    let t = haimg::render::templates::Templates::embedded();
    let (name, _) = haimg::recipe::EMBEDDED[0];
    let recipe = haimg::recipe::load(Some(name)).unwrap().recipe;
    let script = haimg::bake::script(&recipe, &"ab".repeat(32), &t).unwrap();
    let line = script
        .lines()
        .find(|l| l.contains("\"${HAIMG_BINARY_URL}\""))
        .expect("the script downloads HAIMG_BINARY_URL");
    let dir = tempfile::tempdir().unwrap();
    let line = line.replace("/usr/local/bin/", &format!("{}/", dir.path().display()));
    let url = format!(
        "http://127.0.0.1:{port}/haimg?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef"
    );
    let o = bash(
        &format!("sleep() {{ :; }}; {line} || echo gave-up"),
        &[("HAIMG_BINARY_URL", &url)],
    );
    assert_eq!(stdout(&o), "gave-up\n");
    let err = stderr(&o);
    assert!(err.contains("403"), "curl says why: {err}");
    assert!(err.contains("attempt 5 of curl failed"), "{err}");
    assert!(
        !err.contains("X-Amz") && !err.contains("deadbeef") && !err.contains("127.0.0.1"),
        "{err}"
    );
}

#[test]
fn every_apt_and_dpkg_call_of_every_script_waits_for_the_lock() {
    let t = haimg::render::templates::Templates::embedded();
    for (name, _) in haimg::recipe::EMBEDDED {
        let r = haimg::recipe::load_from(Some(name), Some(&kube_artifacts()))
            .unwrap()
            .recipe;
        let s = haimg::bake::script(&r, &"ab".repeat(32), &t).unwrap();
        let lib_text = std::fs::read_to_string(lib()).unwrap();
        assert!(
            s.contains(&lib_text),
            "{name}: the library is included verbatim"
        );
        let body = s.replace(&lib_text, "");
        for (no, line) in body.lines().enumerate() {
            let code = line.split('#').next().unwrap_or("");
            for tool in [
                "apt-get ",
                "apt-mark hold",
                "apt-mark unhold",
                "dpkg -i",
                "dpkg --purge",
            ] {
                assert!(
                    !code.contains(tool),
                    "{name}: line {} calls `{tool}` without the lock timeout: {line}",
                    no + 1
                );
            }
        }
        for needle in [
            "apt_quiesce",
            "retry apt_get update",
            "apt_mark hold",
            "apt_get purge",
        ] {
            assert!(body.contains(needle), "{name}: {needle}");
        }
    }
}

/// An OCI archive of `file` as image `name` (scripts/oci-archive.py).
fn oci_archive(dir: &Path, name: &str, file: &Path) -> PathBuf {
    let out = dir.join("image.tar");
    let o = run({
        let mut c = Command::new(venv().join("bin/python"));
        c.arg(repo().join("scripts/oci-archive.py"))
            .args(["--name", name, "--out"])
            .arg(&out)
            .args(["--entrypoint", "/payload", "--add"])
            .arg(format!("{}:/payload", file.display()));
        c
    });
    assert!(o.status.success(), "oci-archive: {}", stderr(&o));
    out
}

#[test]
fn image_checks_see_missing_and_incomplete_images() {
    let ctd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::write(&payload, "x".repeat(4096)).unwrap();
    let name = "registry.example/haimg/test:1.0";
    let archive = oci_archive(dir.path(), name, &payload);
    let o = ctd.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(o.status.success(), "import: {}", stderr(&o));

    let addr = ctd.address();
    let env = [("CONTAINERD_ADDRESS", addr.to_str().unwrap())];
    let check = |image: &str| bash(&format!("image_complete '{image}'"), &env);
    let ok = check(name);
    assert!(
        ok.status.success(),
        "a complete image passes: {}",
        stderr(&ok)
    );

    // What the bake used to rely on: `ctr images check` exits 0 for an image it lacks.
    assert!(ctd
        .ctr(&["images", "check", "name==registry.example/absent:1"])
        .status
        .success());
    let missing = check("registry.example/absent:1");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("not in containerd"),
        "{}",
        stderr(&missing)
    );

    // Remove the layer blob: the image is still listed, still exits 0 in `ctr images check`.
    let listing = stdout(&ctd.ctr(&["content", "ls", "-q"]));
    let manifest_row = stdout(&ctd.ctr(&["images", "ls"]));
    let layer = listing
        .lines()
        .find(|d| {
            let info = stdout(&ctd.ctr(&["content", "get", d]));
            !manifest_row.contains(d) && !info.starts_with('{')
        })
        .expect("a layer blob")
        .to_string();
    assert!(ctd.ctr(&["content", "rm", &layer]).status.success());
    assert!(ctd
        .ctr(&["images", "check", &format!("name=={name}")])
        .status
        .success());
    let incomplete = check(name);
    assert_eq!(incomplete.status.code(), Some(1));
    assert!(
        stderr(&incomplete).contains("incomplete"),
        "{}",
        stderr(&incomplete)
    );
}

#[test]
fn calico_images_come_from_quay() {
    // Image lines as upstream's calico.yaml writes them, and others that must not change.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("calico.yaml");
    std::fs::write(
        &f,
        "      containers:\n        - name: calico-node\n          image: docker.io/calico/node:v3.28.1\n\
         \x20         image: \"docker.io/calico/cni:v3.28.1\"\n          image: calico/kube-controllers:v3.28.1\n\
         \x20       - image: 'docker.io/calico/pod2daemon-flexvol:v3.28.1'\n          image: docker.io/library/busybox:1.36\n\
         \x20         # image: docker.io/calico/commented:v1\n",
    )
    .unwrap();
    let o = bash(&format!("prefer_quay_for_calico '{}'", f.display()), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "      containers:\n        - name: calico-node\n          image: quay.io/calico/node:v3.28.1\n\
         \x20         image: \"quay.io/calico/cni:v3.28.1\"\n          image: quay.io/calico/kube-controllers:v3.28.1\n\
         \x20       - image: 'quay.io/calico/pod2daemon-flexvol:v3.28.1'\n          image: docker.io/library/busybox:1.36\n\
         \x20         # image: docker.io/calico/commented:v1\n"
    );
}

#[test]
fn the_rendered_hosts_toml_sends_pulls_to_the_mirror_first() {
    // A mirror that only notes that it was asked (the pull itself then fails: no network).
    let mirror = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}", mirror.local_addr().unwrap().port());
    let ctd = Containerd::start();
    let hosts = tempfile::tempdir().unwrap();
    let dir = hosts.path().join("docker.io");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        haimg::bake::hosts_toml("docker.io", &[url]),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(mirror.accept().is_ok());
    });
    let o = ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts.path().to_str().unwrap(),
        "docker.io/library/haproxy:2.8.14",
    ]);
    assert!(!o.status.success(), "no registry answers here");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "ctr asked the mirror: {}",
        stderr(&o)
    );
}

#[test]
fn a_recipe_with_mirrors_renders_a_shellcheck_clean_script() {
    let text = std::fs::read_to_string(repo().join("image-recipes/ubuntu-20.04.yaml"))
        .unwrap()
        .replace(
            "  hardening:",
            "  registryMirrors:\n    docker.io: [https://123456789012.dkr.ecr.us-west-2.amazonaws.com/v2/docker-hub]\n    quay.io: [https://mirror.internal.example, https://mirror2.internal.example]\n  hardening:",
        );
    let r = haimg::recipe::load_str(&text, "mirrors.yaml")
        .unwrap()
        .recipe;
    let t = haimg::render::templates::Templates::embedded();
    let s = haimg::bake::script(&r, &"ab".repeat(32), &t).unwrap();
    for needle in [
        "/etc/containerd/certs.d/'docker.io'/hosts.toml",
        "/etc/containerd/certs.d/'quay.io'/hosts.toml",
        "server = \"https://registry-1.docker.io\"",
        "[host.\"https://mirror2.internal.example\"]",
        "--hosts-dir /etc/containerd/certs.d",
    ] {
        assert!(s.contains(needle), "{needle}");
    }
    assert_shellcheck_clean(&s);
}

/// An HTTP server that keeps the body of every PUT (what S3 does with a presigned PUT).
struct PutSink {
    child: std::process::Child,
    url: String,
    dir: tempfile::TempDir,
}

impl PutSink {
    fn start() -> PutSink {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(venv().join("bin/python"))
            .arg("-c")
            .arg(
                r#"
import http.server, sys, os
n = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n[0] += 1
        open(os.path.join(sys.argv[1], "put-%04d" % n[0]), "wb").write(body)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#,
            )
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let url = format!(
            "http://127.0.0.1:{}/bucket/provision.log?X-Amz-Signature=s3cr3t",
            line.trim()
        );
        PutSink { child, url, dir }
    }

    /// The last body received.
    fn last(&self) -> String {
        let mut puts: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        puts.sort();
        puts.last()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .unwrap_or_default()
    }
}

impl Drop for PutSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_failing_script_uploads_its_whole_log_on_exit() {
    let sink = PutSink::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("provision.log");
    // More than SSM keeps (24,000 characters of stdout), then a failure on stderr.
    let o = bash(
        &format!(
            "LOG_UPLOAD_INTERVAL=1; log_to_url '{}' \"$SINK\"; echo '==> [1/2] first'; \
             for i in $(seq 1 2000); do echo \"line $i of the apt output\"; done; \
             echo '==> [2/2] second'; echo 'the real reason' >&2; exit 7",
            log.display()
        ),
        &[("SINK", &sink.url)],
    );
    assert_eq!(
        o.status.code(),
        Some(7),
        "the script's own status: {}",
        stderr(&o)
    );
    let got = sink.last();
    assert!(got.len() > 24_000, "the whole log: {} bytes", got.len());
    assert!(got.starts_with("==> [1/2] first\n"), "{}", &got[..40]);
    assert!(
        got.ends_with("==> [2/2] second\nthe real reason\n"),
        "{}",
        &got[got.len() - 80..]
    );
    // Still on the terminal too (SSM's copy), and the URL is not.
    assert!(stdout(&o).contains("line 2000 of the apt output"));
    assert!(!stdout(&o).contains("s3cr3t") && !stderr(&o).contains("s3cr3t"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A real containerd, and an OCI archive of image `name` with its sha256.
fn archive_fixture(name: &str) -> (Containerd, tempfile::TempDir, PathBuf, String) {
    let ctd = Containerd::start();
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::write(&payload, name.repeat(256)).unwrap();
    let archive = oci_archive(dir.path(), name, &payload);
    let sha = sha256_file(&archive);
    (ctd, dir, archive, sha)
}

#[test]
fn an_image_archive_is_imported_only_with_the_pinned_digest_and_name() {
    let name = "registry.example/haimg/imported:1.0";
    let (ctd, _dir, archive, sha) = archive_fixture(name);
    let addr = ctd.address();
    // A presigned-looking URL: curl reads the file through it, and it must never be printed.
    let url = format!("file://{}?X-Amz-Signature=deadbeef", archive.display());
    let env = [("CONTAINERD_ADDRESS", addr.to_str().unwrap())];
    let import = |sha: &str, name: &str| {
        bash(
            &format!("sleep() {{ :; }}; import_image_archive \"$U\" '{sha}' '{name}' && image_complete '{name}'"),
            &[env[0], ("U", url.as_str())],
        )
    };
    // A wrong digest: nothing imported, the image named, the URL not.
    let bad = import(&"0".repeat(64), name);
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr(&bad);
    assert!(
        err.contains(&format!("the archive of {name} has sha256 {sha}")),
        "{err}"
    );
    assert!(
        !err.contains("deadbeef") && !err.contains("file://"),
        "{err}"
    );
    assert!(!stdout(&ctd.ctr(&["images", "ls", "-q"])).contains(name));
    // The archive holds another image than the recipe says.
    let other = import(&sha, "registry.example/haimg/other:1.0");
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stderr(&other).contains("does not hold registry.example/haimg/other:1.0"),
        "{}",
        stderr(&other)
    );
    // Right digest and name: imported, complete and unpacked.
    let ok = import(&sha, name);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn a_recipe_with_image_archives_renders_a_clean_script_whose_import_step_works() {
    let name = "registry.k8s.io/pause:3.9";
    let (ctd, dir, archive, sha) = archive_fixture(name);
    let text = std::fs::read_to_string(repo().join("image-recipes/ubuntu-20.04.yaml"))
        .unwrap()
        .replace(
            "  hardening:",
            &format!(
                "  images:\n    - {{name: {name}, archive: {}, sha256: {sha}}}\n  hardening:",
                archive.display()
            ),
        );
    let r = haimg::recipe::load_str(&text, "offline.yaml")
        .unwrap()
        .recipe;
    let t = haimg::render::templates::Templates::embedded();
    let s = haimg::bake::script(&r, &"ab".repeat(32), &t).unwrap();
    assert_shellcheck_clean(&s);
    // The rendered import step, run as the builder would: the archive comes through the
    // staged URL, the image is complete in containerd, and the pull loop skips it.
    let block = |from: &str, to: &str| -> String {
        let start = s
            .find(from)
            .unwrap_or_else(|| panic!("{from} in the script"));
        let end = start + s[start..].find(to).unwrap() + to.len();
        s[start..end].to_string()
    };
    let arrays =
        block("readonly IMPORTED_IMAGES=(", "readonly UNITS=(").replace("readonly UNITS=(", "");
    let import = block(": \"${HAIMG_IMAGE_ARCHIVE_URLS:?", "\ndone\n");
    assert!(
        s.contains("grep -qxF \"${image}\""),
        "the pull loop skips imported images"
    );
    let url = format!("file://{}?X-Amz-Signature=deadbeef", archive.display());
    let addr = ctd.address();
    let o = bash(
        &format!("sleep() {{ :; }}; {arrays}\n{import}\nimage_complete '{name}'"),
        &[
            ("CONTAINERD_ADDRESS", addr.to_str().unwrap()),
            ("HAIMG_IMAGE_ARCHIVE_URLS", &url),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("imported {name} (archive sha256 {sha})")));
    // The image manifest's Python, with the archive digests in it, compiles.
    let start = s
        .find("\nimport json, subprocess, sys\nout, recipe")
        .unwrap();
    let end = start + s[start..].find("\nPY\n").unwrap();
    let py = &s[start..end];
    assert!(
        py.contains(&format!("archives = {{\"{name}\":\"{sha}\"}}")),
        "{py}"
    );
    let pyfile = dir.path().join("manifest.py");
    std::fs::write(&pyfile, py).unwrap();
    let o = run({
        let mut c = Command::new("python3");
        c.args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
            .arg(&pyfile);
        c
    });
    assert!(
        o.status.success(),
        "the manifest's Python does not parse: {}\n{py}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("deadbeef") && !stderr(&o).contains("deadbeef"));
}

/// Fails with shellcheck's findings unless the script is clean.
fn assert_shellcheck_clean(script: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), script).unwrap();
    let o = run({
        let mut c = Command::new(require_tool("shellcheck"));
        c.arg(f.path());
        c
    });
    assert!(o.status.success(), "{}", stdout(&o));
}

/// A minimal real package (dpkg-deb) named `file` that says it is `package` `version`.
fn tiny_deb(dir: &Path, file: &str, package: &str, version: &str) -> (PathBuf, String) {
    let root = dir.join(format!("root-{file}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@localhost>\nDescription: test\n"),
    )
    .unwrap();
    let out = dir.join(file);
    let o = run({
        let mut c = Command::new("dpkg-deb");
        c.args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&out);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let sha = sha256_file(&out);
    (out, sha)
}

#[test]
fn local_kubernetes_packages_are_fetched_checked_by_digest_and_by_what_they_say_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("  kubernetesPackages:\n");
    let mut urls = Vec::new();
    for p in ["kubeadm", "kubelet", "kubectl"] {
        let file = format!("{p}_1.30.4-1.1_amd64.deb");
        // The file named kubectl is really kubelet: what the package says decides.
        let inside = if p == "kubectl" { "kubelet" } else { p };
        let (path, sha) = tiny_deb(dir.path(), &file, inside, "1.30.4-1.1");
        yaml.push_str(&format!(
            "    - {{file: {}, sha256: {sha}}}\n",
            path.display()
        ));
        urls.push(format!(
            "file://{}?X-Amz-Signature=deadbeef",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(repo().join("image-recipes/ubuntu-20.04.yaml"))
        .unwrap()
        .replace("  hardening:", &format!("{yaml}  hardening:"));
    let r = haimg::recipe::load_str(&text, "offline.yaml")
        .unwrap()
        .recipe;
    assert_eq!(r.kubernetes_packages.len(), 3);
    let t = haimg::render::templates::Templates::embedded();
    let s = haimg::bake::script(&r, &"ab".repeat(32), &t).unwrap();
    assert!(
        !s.contains("pkgs.k8s.io/core"),
        "no Kubernetes repository with local packages"
    );
    assert!(s.contains("check_pins_available \"${REPO_PINS[@]}\""));
    assert_shellcheck_clean(&s);
    // The rendered step, run as the builder would, into a directory of the test's.
    let start = s.find("readonly LOCAL_DEBS=(").unwrap();
    let end = s.find("readonly EXTRA_IMAGES=(").unwrap();
    let arrays = &s[start..end];
    let start = s
        .find("step \"kubernetes packages from staged files\"")
        .unwrap();
    let end = start + s[start..].find("\ndone\n").unwrap() + 6;
    let fetch = s[start..end].replace(
        "/var/cache/haimg/debs",
        &dir.path().join("cache").display().to_string(),
    );
    let o = bash(
        &format!("sleep() {{ :; }}; step() {{ echo \"==> $*\"; }}; {arrays}\n{fetch}"),
        &[("HAIMG_DEB_URLS", &urls.join("\n"))],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("the file pinned as kubectl 1.30.4-1.1 is kubelet 1.30.4-1.1"),
        "{err}"
    );
    assert!(
        stdout(&o).contains("staged kubeadm 1.30.4-1.1"),
        "{}",
        stdout(&o)
    );
    assert!(!err.contains("deadbeef") && !stdout(&o).contains("deadbeef"));
}

/// A signed apt mirror over HTTP: `dists/<suite>/InRelease` clearsigned with a fresh key,
/// one package per suite. Returns the server (killed on drop), its URL and the key file.
struct SignedMirror {
    server: std::process::Child,
    url: String,
    key: PathBuf,
}

impl Drop for SignedMirror {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn gpg(home: &Path, args: &[&str]) -> Output {
    let o = run({
        let mut c = Command::new(require_tool("gpg"));
        c.arg("--homedir")
            .arg(home)
            .args(["--batch", "--quiet"])
            .args(args);
        c
    });
    assert!(o.status.success(), "gpg {args:?}: {}", stderr(&o));
    o
}

fn signed_mirror(dir: &Path, suites: &[&str]) -> SignedMirror {
    let home = dir.join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    gpg(
        &home,
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            "haimg test mirror",
            "ed25519",
            "sign",
            "never",
        ],
    );
    let key = dir.join("mirror.asc");
    std::fs::write(&key, gpg(&home, &["--armor", "--export"]).stdout).unwrap();
    let root = dir.join("mirror");
    for suite in suites {
        let d = root.join(format!("dists/{suite}"));
        std::fs::create_dir_all(d.join("main/binary-amd64")).unwrap();
        let packages = format!("Package: keepalived\nVersion: 1:2.0.19-2ubuntu0.2\nArchitecture: all\nFilename: pool/keepalived.deb\nSize: 1\nDescription: test ({suite})\n");
        std::fs::write(d.join("main/binary-amd64/Packages"), &packages).unwrap();
        let sha = sha256_file(&d.join("main/binary-amd64/Packages"));
        let date = stdout(&run({
            let mut c = Command::new("date");
            c.args(["-u", "-R"]);
            c
        }));
        std::fs::write(
            d.join("Release"),
            format!(
                "Suite: {suite}\nCodename: {suite}\nComponents: main\nArchitectures: amd64\nDate: {}\nSHA256:\n {sha} {} main/binary-amd64/Packages\n",
                date.trim(),
                packages.len()
            ),
        )
        .unwrap();
        let (rel, inrel) = (d.join("Release"), d.join("InRelease"));
        gpg(
            &home,
            &[
                "--clearsign",
                "-o",
                inrel.to_str().unwrap(),
                rel.to_str().unwrap(),
            ],
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    SignedMirror {
        server,
        url: format!("http://127.0.0.1:{port}/"),
        key,
    }
}

#[test]
fn an_apt_mirror_replaces_the_ubuntu_sources_and_is_trusted_by_its_own_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = signed_mirror(dir.path(), &["focal", "focal-security"]);
    // An apt of the test's own, with the sources an Ubuntu 20.04 AMI ships.
    let ami_sources = "deb http://us-west-2.ec2.archive.ubuntu.com/ubuntu/ focal main restricted\n\
                       deb http://security.ubuntu.com/ubuntu focal-security main\n";
    // Each try with an apt state of its own: apt keeps earlier lists when a new Release
    // fails its signature check, and they must not hide a refusal.
    let tries = std::cell::Cell::new(0);
    let update = |key: &Path| {
        tries.set(tries.get() + 1);
        let apt = dir.path().join(format!("apt-{}", tries.get()));
        let conf = local_repo(&apt, &[]);
        let sources = apt.join("sources.list");
        std::fs::write(&sources, ami_sources).unwrap();
        bash(
            &format!(
                "use_apt_mirror '{}' '{}' '{}' && cat '{}' && apt-get update -q && apt-cache madison keepalived",
                sources.display(),
                mirror.url,
                key.display(),
                sources.display()
            ),
            &[("APT_CONFIG", conf.to_str().unwrap())],
        )
    };
    let ok = update(&mirror.key);
    assert!(ok.status.success(), "{}\n{}", stdout(&ok), stderr(&ok));
    let out = stdout(&ok);
    assert!(
        out.contains(&format!(
            "deb [signed-by={}] {} focal main restricted",
            mirror.key.display(),
            mirror.url
        )),
        "{out}"
    );
    assert!(out.contains("focal-security main"), "{out}");
    assert!(!out.contains("ubuntu.com"), "no Ubuntu host is left: {out}");
    assert!(
        out.contains("1:2.0.19-2ubuntu0.2"),
        "the mirror's packages are seen: {out}"
    );
    // Another key: apt refuses the mirror's Release files.
    let other = tempfile::tempdir().unwrap();
    let stranger = signed_mirror(other.path(), &["focal"]);
    let bad = update(&stranger.key);
    let text = format!("{}{}", stdout(&bad), stderr(&bad));
    assert!(
        text.contains("NO_PUBKEY") || text.contains("is not signed"),
        "a mirror signed by another key must not be trusted: {text}"
    );
    assert!(
        !text.contains("1:2.0.19-2ubuntu0.2"),
        "nothing of the untrusted mirror is used: {text}"
    );
    // The rendered script wires it: the key fetched by digest, the sources rewritten, and
    // no snapshot (the mirror is what it serves).
    let key_sha = sha256_file(&mirror.key);
    let text = std::fs::read_to_string(repo().join("image-recipes/ubuntu-20.04.yaml"))
        .unwrap()
        .replace("  aptSnapshot: 20241101T000000Z\n", "")
        .replace(
            "  hardening:",
            &format!(
                "  aptMirror: {{url: {}, key: {}, sha256: {key_sha}}}\n  hardening:",
                mirror.url,
                mirror.key.display()
            ),
        );
    let r = haimg::recipe::load_str(&text, "mirrored.yaml")
        .unwrap()
        .recipe;
    let t = haimg::render::templates::Templates::embedded();
    let script = haimg::bake::script(&r, &"ab".repeat(32), &t).unwrap();
    for needle in [
        format!("fetch_verified \"${{HAIMG_APT_KEY_URL}}\" '{key_sha}' /etc/apt/keyrings/haimg-mirror.'asc'"),
        format!("use_apt_mirror /etc/apt/sources.list '{}' /etc/apt/keyrings/haimg-mirror.'asc'", mirror.url),
        "readonly APT_SNAPSHOT=''".to_string(),
    ] {
        assert!(script.contains(&needle), "{needle}");
    }
    assert_shellcheck_clean(&script);
    // A mirror and a snapshot together are refused.
    let both = text.replace(
        "  aptMirror:",
        "  aptSnapshot: 20241101T000000Z\n  aptMirror:",
    );
    let e = haimg::recipe::load_str(&both, "both.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("aptSnapshot or aptMirror, not both"), "{e}");
}
