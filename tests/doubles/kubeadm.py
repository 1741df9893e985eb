#!/usr/bin/env python3
"""A strict kubeadm test double for haimg's node agent (HAIMG_KUBEADM).

It accepts only the subcommands, flags and config fields haimg is meant to use, checks
them as kubeadm would (config API version for the Kubernetes version, bootstrap token and
certificate key shapes, CA hash pinning, token and certificate-key expiry), refuses a
config file with secrets that is not mode 0600, and writes the files kubeadm writes
(a real CA certificate made with openssl) under $HAIMG_ROOT.

The simulated cluster lives in $FAKE_CLUSTER_DIR (shared by every node of a test), and
every invocation is appended to $FAKE_CLUSTER_DIR/events.jsonl.
Knobs: FAKE_KUBEADM_INIT_SECONDS, FAKE_KUBEADM_JOIN_SECONDS (durations),
FAKE_KUBEADM_FAIL (comma-separated subcommands that fail), FAKE_KUBEADM_FAIL_FIRST
(cmd:N, the first N fail), FAKE_KUBEADM_GATE (cmd:path, held until path exists).
Like kubeadm, `upload-certs` replaces the uploaded certificates: the previous certificate
key stops working at once.
"""
import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import time
from contextlib import contextmanager

import yaml

ROOT = os.environ.get("HAIMG_ROOT", "/")
CLUSTER = os.environ["FAKE_CLUSTER_DIR"]
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
KEY_RE = re.compile(r"^[0-9a-f]{64}$")
CERTS_TTL = 7200  # kubeadm-certs Secret lifetime


def die(msg, code=2):
    print(f"fake-kubeadm: {msg}", file=sys.stderr)
    sys.exit(code)


def path(p):
    return os.path.join(ROOT, p.lstrip("/"))


@contextmanager
def locked_state():
    os.makedirs(CLUSTER, exist_ok=True)
    with open(os.path.join(CLUSTER, ".lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        f = os.path.join(CLUSTER, "state.json")
        state = json.load(open(f)) if os.path.exists(f) else {"tokens": {}, "certificateKey": None, "nodes": {}}
        yield state
        tmp = f + ".tmp"
        with open(tmp, "w") as out:
            json.dump(state, out)
        os.replace(tmp, f)


def event(**kw):
    kw["t"] = time.time()
    kw["node"] = os.environ.get("FAKE_NODE_NAME", "?")
    with open(os.path.join(CLUSTER, "events.jsonl"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(kw) + "\n")


def expected_api(version):
    minor = int(version.lstrip("v").split(".")[1])
    return "kubeadm.k8s.io/v1beta4" if minor >= 31 else "kubeadm.k8s.io/v1beta3"


def strict(obj, allowed, where):
    if not isinstance(obj, dict):
        die(f"{where}: expected a mapping")
    for k in obj:
        if k not in allowed:
            die(f"{where}: unknown field {k!r}")


def check_registration(nr, api, where):
    strict(nr, {"name", "criSocket", "imagePullPolicy", "kubeletExtraArgs"}, where)
    if not nr.get("name"):
        die(f"{where}.name is required")
    if nr.get("imagePullPolicy") not in ("IfNotPresent", "Never"):
        die(f"{where}.imagePullPolicy must be IfNotPresent or Never on an air-gapped node")
    args = nr.get("kubeletExtraArgs")
    if args is not None:
        if api.endswith("v1beta4"):
            if not isinstance(args, list) or any(set(a) != {"name", "value"} for a in args):
                die(f"{where}.kubeletExtraArgs must be a list of {{name, value}} in v1beta4")
        elif not isinstance(args, dict):
            die(f"{where}.kubeletExtraArgs must be a map in v1beta3")


def read_config(f):
    st = os.stat(f)
    if stat.S_IMODE(st.st_mode) & 0o077:
        die(f"{f}: holds secrets but is mode {oct(stat.S_IMODE(st.st_mode))}, not 0600")
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    by_kind = {}
    for d in docs:
        kind = d.get("kind")
        if kind in by_kind:
            die(f"{f}: two {kind} documents")
        by_kind[kind] = d
    version = os.environ.get("FAKE_KUBERNETES_VERSION", "1.30.4")
    api = expected_api(version)
    for kind, d in by_kind.items():
        if kind in ("InitConfiguration", "ClusterConfiguration", "JoinConfiguration") and d.get("apiVersion") != api:
            die(f"{f}: {kind} is {d.get('apiVersion')}, Kubernetes {version} needs {api}")
    if "InitConfiguration" in by_kind:
        i = by_kind["InitConfiguration"]
        # v1beta4 moved the control-plane wait into InitConfiguration.timeouts.
        init_fields = {"apiVersion", "kind", "bootstrapTokens", "certificateKey", "localAPIEndpoint", "nodeRegistration"}
        if api.endswith("v1beta4"):
            init_fields |= {"timeouts"}
            strict(i.get("timeouts", {}), {"controlPlaneComponentHealthCheck"}, "InitConfiguration.timeouts")
        strict(i, init_fields, "InitConfiguration")
        for t in i.get("bootstrapTokens", []):
            strict(t, {"token", "ttl", "usages", "groups", "description", "expires"}, "InitConfiguration.bootstrapTokens[]")
            if not TOKEN_RE.match(t.get("token", "")):
                die("InitConfiguration.bootstrapTokens[].token is not a bootstrap token")
        if not KEY_RE.match(i.get("certificateKey") or ""):
            die("InitConfiguration.certificateKey must be 64 hex characters")
        strict(i.get("localAPIEndpoint", {}), {"advertiseAddress", "bindPort"}, "InitConfiguration.localAPIEndpoint")
        check_registration(i.get("nodeRegistration", {}), api, "InitConfiguration.nodeRegistration")
    if "ClusterConfiguration" in by_kind:
        c = by_kind["ClusterConfiguration"]
        strict(c, {"apiVersion", "kind", "clusterName", "kubernetesVersion", "controlPlaneEndpoint", "networking", "apiServer", "etcd"}, "ClusterConfiguration")
        if "etcd" in c:
            strict(c["etcd"], {"local"}, "ClusterConfiguration.etcd")
            strict(c["etcd"]["local"], {"imageTag"}, "ClusterConfiguration.etcd.local")
        strict(c.get("networking", {}), {"podSubnet", "serviceSubnet", "dnsDomain"}, "ClusterConfiguration.networking")
        strict(c.get("apiServer", {}), {"certSANs"} | ({"timeoutForControlPlane"} if api.endswith("v1beta3") else set()), "ClusterConfiguration.apiServer")
        if c.get("kubernetesVersion") != "v" + version:
            die(f"ClusterConfiguration.kubernetesVersion {c.get('kubernetesVersion')} is not v{version}")
        if not re.match(r"^[^:]+:\d+$", c.get("controlPlaneEndpoint", "")):
            die("ClusterConfiguration.controlPlaneEndpoint must be host:port")
    if "KubeletConfiguration" in by_kind:
        k = by_kind["KubeletConfiguration"]
        strict(k, {"apiVersion", "kind", "cgroupDriver"}, "KubeletConfiguration")
        if k.get("cgroupDriver") != "systemd":
            die("KubeletConfiguration.cgroupDriver must be systemd (containerd uses SystemdCgroup)")
    if "JoinConfiguration" in by_kind:
        j = by_kind["JoinConfiguration"]
        strict(j, {"apiVersion", "kind", "discovery", "nodeRegistration", "controlPlane"}, "JoinConfiguration")
        strict(j.get("discovery", {}), {"bootstrapToken"}, "JoinConfiguration.discovery")
        strict(j["discovery"].get("bootstrapToken", {}), {"apiServerEndpoint", "token", "caCertHashes"}, "JoinConfiguration.discovery.bootstrapToken")
        if "controlPlane" in j:
            strict(j["controlPlane"], {"localAPIEndpoint", "certificateKey"}, "JoinConfiguration.controlPlane")
        check_registration(j.get("nodeRegistration", {}), api, "JoinConfiguration.nodeRegistration")
    real_validate(f, api)
    return by_kind


# The real kubeadm of each config API (../shared/kubernetes, unpacked by
# scripts/shared-tools.sh): every config the agent writes is also checked by upstream's own
# `kubeadm config validate`, beside this double's rules. Missing means the test fails.
REAL_KUBEADM = {"kubeadm.k8s.io/v1beta3": "kubeadm-1.30.0", "kubeadm.k8s.io/v1beta4": "kubeadm-1.31.2"}


def real_validate(f, api):
    tools = os.environ.get("FAKE_REAL_KUBEADM_DIR")
    if not tools:
        die("FAKE_REAL_KUBEADM_DIR is not set: the double checks every config with the real kubeadm")
    real = os.path.join(tools, REAL_KUBEADM[api])
    if not os.access(real, os.X_OK):
        die(f"{real} is missing: run scripts/install-test-deps.sh")
    # No network: kubeadm would otherwise spend a second on lookups it does not need.
    out = subprocess.run(["unshare", "-n", real, "config", "validate", "--config", f], capture_output=True, text=True)
    if out.returncode != 0:
        die(f"{f}: the real {REAL_KUBEADM[api]} rejects it: {(out.stderr or out.stdout).strip()}")


def ca_hash():
    crt = os.path.join(CLUSTER, "ca.crt")
    out = subprocess.run(f"openssl x509 -pubkey -noout -in {crt} | openssl pkey -pubin -outform der | sha256sum", shell=True, check=True, capture_output=True, text=True)
    return "sha256:" + out.stdout.split()[0]


def write_node_files(control_plane):
    os.makedirs(path("/etc/kubernetes/pki"), exist_ok=True)
    with open(path("/etc/kubernetes/kubelet.conf"), "w") as f:
        f.write("# fake kubelet.conf\n")
    with open(os.path.join(CLUSTER, "ca.crt")) as src, open(path("/etc/kubernetes/pki/ca.crt"), "w") as dst:
        dst.write(src.read())
    if control_plane:
        with open(path("/etc/kubernetes/admin.conf"), "w") as f:
            f.write("# fake admin.conf\n")


def parse_flags(argv, allowed_flags, allowed_bool=()):
    flags, rest, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name in allowed_bool:
                flags[name] = True
            elif name in allowed_flags:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        die(f"--{name} needs a value")
                    val = argv[i]
                flags[name] = val
            else:
                die(f"unknown flag --{name}")
        else:
            rest.append(a)
        i += 1
    return flags, rest


def ttl_seconds(ttl):
    m = re.match(r"^(\d+)s$", ttl) or re.match(r"^(\d+)h0m0s$", ttl)
    if not m:
        die(f"unsupported ttl {ttl!r}")
    return int(m.group(1)) * (3600 if ttl.endswith("h0m0s") else 1)


def check_preflight(flags):
    """Only the manifests-directory check may be skipped, and only when static pods are there."""
    skip = flags.get("ignore-preflight-errors")
    manifests = path("/etc/kubernetes/manifests")
    present = os.path.isdir(manifests) and os.listdir(manifests)
    if skip is not None and skip != "DirAvailable--etc-kubernetes-manifests":
        die(f"--ignore-preflight-errors={skip}: haimg must not skip other checks")
    if present and skip is None:
        die("[preflight] /etc/kubernetes/manifests is not empty", 1)
    if skip is not None and not present:
        die("--ignore-preflight-errors given but /etc/kubernetes/manifests holds nothing")


def kubelet_arg(nr, name):
    args = nr.get("kubeletExtraArgs") or {}
    if isinstance(args, list):
        return next((a["value"] for a in args if a["name"] == name), None)
    return args.get(name)


def gate(cmd):
    """FAKE_KUBEADM_GATE=cmd:path: hold `cmd` (after its start event) until `path` exists,
    so a test can make something happen while kubeadm runs, on events, not on sleeps."""
    for rule in filter(None, os.environ.get("FAKE_KUBEADM_GATE", "").split(",")):
        which, _, path_ = rule.partition(":")
        if which == cmd:
            event(cmd=f"{cmd}-gated")
            while not os.path.exists(path_):
                time.sleep(0.05)


def fail_if_asked(cmd):
    if cmd in os.environ.get("FAKE_KUBEADM_FAIL", "").split(","):
        event(cmd=cmd, failed=True)
        die(f"{cmd}: simulated failure", 1)
    # FAKE_KUBEADM_FAIL_FIRST=join:2 — this node's first two joins fail, later ones work
    # (the API not yet reachable through the load balancer, say).
    for rule in filter(None, os.environ.get("FAKE_KUBEADM_FAIL_FIRST", "").split(",")):
        which, _, times = rule.partition(":")
        if which != cmd:
            continue
        counter = os.path.join(CLUSTER, f"fail-first-{os.environ.get('FAKE_NODE_NAME', '?')}-{cmd}")
        seen = int(open(counter).read()) if os.path.exists(counter) else 0
        open(counter, "w").write(str(seen + 1))
        if seen < int(times):
            event(cmd=cmd, failed=True)
            die(f"{cmd}: simulated transient failure {seen + 1} of {times}", 1)


def main(argv):
    if not argv:
        die("no subcommand")
    cmd = argv[0]
    if cmd == "init" and argv[1:3] == ["phase", "upload-certs"]:
        flags, rest = parse_flags(argv[3:], {"config", "kubeconfig"}, {"upload-certs"})
        if rest or not flags.get("upload-certs") or "config" not in flags:
            die("init phase upload-certs needs --upload-certs --config")
        if not os.path.exists(flags.get("kubeconfig", "")):
            die("--kubeconfig does not exist")
        docs = read_config(flags["config"])
        key = docs["InitConfiguration"]["certificateKey"]
        event(cmd="upload-certs-start")
        gate("upload-certs")
        fail_if_asked("upload-certs")
        with locked_state() as s:
            s["certificateKey"] = {"key": key, "expires": time.time() + CERTS_TTL}
        event(cmd="upload-certs")
        return
    if cmd == "init":
        flags, rest = parse_flags(argv[1:], {"config", "ignore-preflight-errors"}, {"upload-certs"})
        check_preflight(flags)
        if rest or "config" not in flags or not flags.get("upload-certs"):
            die("init needs exactly --config F --upload-certs")
        docs = read_config(flags["config"])
        for k in ("InitConfiguration", "ClusterConfiguration"):
            if k not in docs:
                die(f"init: {k} missing")
        event(cmd="init-start")
        # kubeadm's kubeconfig phase writes admin.conf before it waits for the control
        # plane (most of an init's time): a timer that looks for it may fire mid-init.
        os.makedirs(path("/etc/kubernetes"), exist_ok=True)
        with open(path("/etc/kubernetes/admin.conf"), "w") as f:
            f.write("# fake admin.conf (written by the kubeconfig phase)\n")
        gate("init")
        time.sleep(float(os.environ.get("FAKE_KUBEADM_INIT_SECONDS", "0")))
        fail_if_asked("init")
        i = docs["InitConfiguration"]
        with locked_state() as s:
            if s.get("initializedBy") not in (None, os.environ.get("FAKE_NODE_NAME")):
                # A second `kubeadm init` behind the same endpoint makes a cluster of its
                # own (its own etcd, CA and uploaded certs): the first is untouched.
                write_node_files(True)
                event(cmd="init", orphan=True)
                return
            s["initializedBy"] = os.environ.get("FAKE_NODE_NAME")
            own_crt, own_key = path("/etc/kubernetes/pki/ca.crt"), path("/etc/kubernetes/pki/ca.key")
            if os.path.exists(own_crt) or os.path.exists(own_key):
                # kubeadm uses a CA it finds in place: both halves, and they must match.
                if not (os.path.exists(own_crt) and os.path.exists(own_key)):
                    die("init: /etc/kubernetes/pki has only one of ca.crt and ca.key", 1)
                if oct(os.stat(own_key).st_mode & 0o777) != "0o600":
                    die("init: /etc/kubernetes/pki/ca.key must be 0600", 1)
                pub = lambda args: subprocess.run(args, check=True, capture_output=True).stdout
                if pub(["openssl", "x509", "-in", own_crt, "-noout", "-pubkey"]) != pub(["openssl", "pkey", "-in", own_key, "-pubout"]):
                    die("init: ca.key does not match ca.crt", 1)
                if b"CA:TRUE" not in pub(["openssl", "x509", "-in", own_crt, "-noout", "-text"]):
                    die("init: ca.crt is not a CA certificate", 1)
                import shutil
                shutil.copy(own_crt, os.path.join(CLUSTER, "ca.crt"))
                shutil.copy(own_key, os.path.join(CLUSTER, "ca.key"))
                event(cmd="init-existing-ca")
            elif not os.path.exists(os.path.join(CLUSTER, "ca.crt")):
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kubernetes",
                                "-keyout", os.path.join(CLUSTER, "ca.key"), "-out", os.path.join(CLUSTER, "ca.crt")], check=True, capture_output=True)
            for t in i.get("bootstrapTokens", []):
                s["tokens"][t["token"]] = time.time() + ttl_seconds(t.get("ttl", "86400s"))
            s["certificateKey"] = {"key": i["certificateKey"], "expires": time.time() + CERTS_TTL}
            s["nodes"][i["nodeRegistration"]["name"]] = {"controlPlane": True, "ready": True,
                                                         "providerID": kubelet_arg(i["nodeRegistration"], "provider-id")}
        write_node_files(True)
        event(cmd="init", endpoint=docs["ClusterConfiguration"]["controlPlaneEndpoint"],
              bindPort=i["localAPIEndpoint"]["bindPort"], kubeletExtraArgs=i["nodeRegistration"].get("kubeletExtraArgs"),
              certSANs=docs["ClusterConfiguration"].get("apiServer", {}).get("certSANs", []),
              tokenTtls=[t.get("ttl") for t in i.get("bootstrapTokens", [])],
              etcdImageTag=docs["ClusterConfiguration"].get("etcd", {}).get("local", {}).get("imageTag"),
              providerID=kubelet_arg(i["nodeRegistration"], "provider-id"))
        return
    if cmd == "join":
        flags, rest = parse_flags(argv[1:], {"config", "ignore-preflight-errors"})
        check_preflight(flags)
        if rest or "config" not in flags:
            die("join needs exactly --config F")
        docs = read_config(flags["config"])
        j = docs.get("JoinConfiguration") or die("join: JoinConfiguration missing")
        bt = j["discovery"]["bootstrapToken"]
        event(cmd="join-start", controlPlane="controlPlane" in j)
        gate("join")
        time.sleep(float(os.environ.get("FAKE_KUBEADM_JOIN_SECONDS", "0")))
        fail_if_asked("join")
        with locked_state() as s:
            if not os.path.exists(os.path.join(CLUSTER, "ca.crt")):
                die(f"join: could not reach the API server at {bt.get('apiServerEndpoint')}: no cluster yet", 1)
            exp = s["tokens"].get(bt.get("token"))
            if exp is None or exp < time.time():
                die("join: the bootstrap token is unknown or expired", 1)
            if ca_hash() not in bt.get("caCertHashes", []):
                die("join: no caCertHashes entry pins the cluster CA", 1)
            if "controlPlane" in j:
                ck = s.get("certificateKey") or {}
                if j["controlPlane"].get("certificateKey") != ck.get("key") or ck.get("expires", 0) < time.time():
                    event(cmd="join", failed=True, reason="certificate-key")
                    die("join: the certificate key does not decrypt the uploaded certs (wrong or expired)", 1)
            # A Node of the same name (a recycled address) is taken over, as the kubelet does.
            s["nodes"][j["nodeRegistration"]["name"]] = {"controlPlane": "controlPlane" in j, "ready": True,
                                                         "providerID": kubelet_arg(j["nodeRegistration"], "provider-id")}
        write_node_files("controlPlane" in j)
        event(cmd="join", controlPlane="controlPlane" in j, withCertificateKey=bool(j.get("controlPlane", {}).get("certificateKey")),
              endpoint=bt.get("apiServerEndpoint"), bindPort=j.get("controlPlane", {}).get("localAPIEndpoint", {}).get("bindPort"),
              providerID=kubelet_arg(j["nodeRegistration"], "provider-id"))
        return
    if cmd == "token" and argv[1:2] == ["create"]:
        flags, rest = parse_flags(argv[2:], {"ttl", "kubeconfig"})
        if rest:
            die("token create: haimg must let kubeadm generate the token (no positional token)")
        if not os.path.exists(flags.get("kubeconfig", "")):
            die("--kubeconfig does not exist")
        import secrets
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        tok = "".join(secrets.choice(alphabet) for _ in range(6)) + "." + "".join(secrets.choice(alphabet) for _ in range(16))
        with locked_state() as s:
            s["tokens"][tok] = time.time() + ttl_seconds(flags.get("ttl", "86400s"))
        event(cmd="token-create")
        print(tok)
        return
    if cmd == "reset":
        flags, rest = parse_flags(argv[1:], set(), {"force"})
        if rest or not flags.get("force"):
            die("reset needs --force")
        import shutil
        shutil.rmtree(path("/etc/kubernetes"), ignore_errors=True)
        with locked_state() as s:
            if s.get("initializedBy") == os.environ.get("FAKE_NODE_NAME"):
                # The node that initialized the cluster resets: its cluster is gone.
                s.update({"initializedBy": None, "tokens": {}, "certificateKey": None, "nodes": {}})
                for f in ("ca.crt", "ca.key"):
                    if os.path.exists(os.path.join(CLUSTER, f)):
                        os.remove(os.path.join(CLUSTER, f))
        event(cmd="reset")
        return
    die(f"unknown subcommand {' '.join(argv[:2])!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
