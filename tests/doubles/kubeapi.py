#!/usr/bin/env python3
"""A Kubernetes API double that enforces what the Node authorizer and NodeRestriction allow a
kubelet (user `system:node:<name>`, group `system:nodes`), over TLS with client
certificates, as the real API server does.

    kubeapi.py --port P --cert server.pem --key server.key --ca ca.pem --state state.json --events events.jsonl

A kubelet identity may: PATCH its own Node (never another's, never its taints); list pods
with the field selector `spec.nodeName=<itself>`; GET a pod bound to it; create an eviction
for a pod bound to it. Everything else is 403, as it is for real: reading a DaemonSet (what
`kubectl drain` needs), deleting pods, anything about another node, and a pod that is no
longer bound to it (gone pods are 403 to a node, not 404). `system:masters` may do anything.

Evictions honour PodDisruptionBudgets: a pod matched by a budget is evicted only if the
ready, non-terminating pods it matches stay at or above minAvailable afterwards; else 429.
An evicted pod terminates for its `graceSeconds`, then is gone. A pod with `readyAfterBlocked:
N` becomes ready once the double has refused N evictions (a replacement that starts while
the drainer waits). Every request is appended to the events file with its outcome.
"""
import argparse
import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def status(code, reason, message):
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}


class State:
    def __init__(self, path, events):
        self.s = json.load(open(path))
        self.events = events
        self.blocked = 0
        for p in self.s["pods"]:
            p.setdefault("ready", True)
            p.setdefault("terminating", False)

    def event(self, **kw):
        kw["t"] = time.time()
        with open(self.events, "a") as f:
            f.write(json.dumps(kw) + "\n")

    def pod(self, ns, name):
        return next((p for p in self.s["pods"] if p["namespace"] == ns and p["name"] == name), None)

    def render(self, p):
        meta = {"name": p["name"], "namespace": p["namespace"], "uid": p["uid"], "labels": p.get("labels", {})}
        if p.get("mirror"):
            meta["annotations"] = {"kubernetes.io/config.mirror": "mirror"}
        if p.get("owner"):
            meta["ownerReferences"] = [{"kind": p["owner"], "name": "owner", "apiVersion": "apps/v1", "uid": "o"}]
        if p["terminating"]:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "spec": {"nodeName": p["node"]}, "status": {"phase": p.get("phase", "Running")}}

    def budget_allows(self, pod):
        for b in self.s.get("pdbs", []):
            sel = b["selector"]
            if all(pod.get("labels", {}).get(k) == v for k, v in sel.items()):
                healthy = [p for p in self.s["pods"] if all(p.get("labels", {}).get(k) == v for k, v in sel.items())
                           and p["ready"] and not p["terminating"]]
                if len(healthy) - 1 < b["minAvailable"]:
                    return False
        return True

    def evict(self, pod):
        if not self.budget_allows(pod):
            self.blocked += 1
            for p in self.s["pods"]:
                if p.get("readyAfterBlocked") is not None and self.blocked >= p["readyAfterBlocked"]:
                    p["ready"] = True
            return status(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.")
        pod["terminating"] = True

        def gone():
            time.sleep(pod.get("graceSeconds", 0.5))
            with LOCK:
                self.s["pods"].remove(pod)
                self.event(kind="pod-deleted", pod=f"{pod['namespace']}/{pod['name']}")

        threading.Thread(target=gone, daemon=True).start()
        return 201, {"kind": "Eviction", "apiVersion": "policy/v1", "metadata": {"name": pod["name"], "namespace": pod["namespace"]}}


def identity(cert):
    cn, groups = None, []
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
            elif k == "organizationName":
                groups.append(v)
    return cn, groups


def handle(state, user, groups, method, path, query, body):
    admin = "system:masters" in groups
    node = user[len("system:node:"):] if user and user.startswith("system:node:") and "system:nodes" in groups else None
    if not admin and node is None:
        return status(403, "Forbidden", f"user {user!r} is not authorized")
    parts = [p for p in path.split("/") if p]
    forbidden = status(403, "Forbidden", f'pods is forbidden: User "{user}" cannot {method.lower()} {path}: no relationship found between node \'{node}\' and this object')
    # PATCH /api/v1/nodes/<name>
    if method == "PATCH" and parts[:3] == ["api", "v1", "nodes"] and len(parts) == 4:
        if not admin and parts[3] != node:
            return forbidden
        patch = json.loads(body or b"{}")
        if "taints" in json.dumps(patch) and not admin:
            return status(403, "Forbidden", f"node {node!r} is not allowed to modify taints")
        if parts[3] not in state.s["nodes"]:
            return status(404, "NotFound", f'nodes "{parts[3]}" not found')
        unschedulable = patch.get("spec", {}).get("unschedulable")
        if unschedulable is not None:
            state.s.setdefault("cordoned", []).append(parts[3])
        return 200, {"kind": "Node", "metadata": {"name": parts[3]}, "spec": {"unschedulable": bool(unschedulable)}}
    # GET /api/v1/pods?fieldSelector=spec.nodeName=<name>
    if method == "GET" and parts == ["api", "v1", "pods"]:
        sel = query.get("fieldSelector", [""])[0]
        want = sel[len("spec.nodeName="):] if sel.startswith("spec.nodeName=") else None
        if not admin and want != node:
            return status(403, "Forbidden", "a node may list only the pods bound to it (fieldSelector=spec.nodeName=<node>)")
        items = [state.render(p) for p in state.s["pods"] if want is None or p["node"] == want]
        return 200, {"kind": "PodList", "apiVersion": "v1", "items": items}
    # /api/v1/namespaces/<ns>/pods/<name>[/eviction]
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (6, 7) and parts[4] == "pods":
        ns, name = parts[3], parts[5]
        pod = state.pod(ns, name)
        bound = pod is not None and (admin or pod["node"] == node)
        if len(parts) == 6 and method == "GET":
            if not bound:
                return forbidden if not admin else status(404, "NotFound", f'pods "{name}" not found')
            return 200, state.render(pod)
        if len(parts) == 7 and parts[6] == "eviction" and method == "POST":
            if not bound:
                return forbidden if not admin else status(404, "NotFound", f'pods "{name}" not found')
            return state.evict(pod)
    return status(403, "Forbidden", f"{method} {path} is not allowed for {user}")


def main():
    ap = argparse.ArgumentParser()
    for a in ("port", "cert", "key", "ca", "state", "events"):
        ap.add_argument("--" + a, required=True)
    a = ap.parse_args()
    state = State(a.state, a.events)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def serve(self):
            user, groups = identity(self.connection.getpeercert() or {})
            url = urllib.parse.urlsplit(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            with LOCK:
                code, doc = handle(state, user, groups, self.command, url.path, urllib.parse.parse_qs(url.query), body)
                state.event(kind="request", user=user, verb=self.command, path=url.path, query=url.query, code=code)
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = serve

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(a.ca)
    srv = ThreadingHTTPServer(("127.0.0.1", int(a.port)), H)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
