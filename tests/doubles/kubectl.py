#!/usr/bin/env python3
"""A strict kubectl test double (HAIMG_KUBECTL): only what haimg uses, against the
simulated cluster in $FAKE_CLUSTER_DIR (see kubeadm.py)."""
import fcntl
import json
import os
import sys
import time

CLUSTER = os.environ["FAKE_CLUSTER_DIR"]


def die(msg, code=2):
    print(f"fake-kubectl: {msg}", file=sys.stderr)
    sys.exit(code)


def event(**kw):
    kw["t"] = time.time()
    kw["node"] = os.environ.get("FAKE_NODE_NAME", "?")
    with open(os.path.join(CLUSTER, "events.jsonl"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(kw) + "\n")


def state(update=None):
    with open(os.path.join(CLUSTER, ".lock"), "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        f = os.path.join(CLUSTER, "state.json")
        s = json.load(open(f)) if os.path.exists(f) else {"tokens": {}, "certificateKey": None, "nodes": {}}
        if update:
            update(s)
            with open(f + ".tmp", "w") as out:
                json.dump(s, out)
            os.replace(f + ".tmp", f)
        return s


def main(argv):
    if len(argv) < 3 or argv[0] != "--kubeconfig":
        die("haimg must always pass --kubeconfig first")
    if not os.path.exists(argv[1]):
        die(f"--kubeconfig {argv[1]} does not exist")
    args = argv[2:]
    if args[:1] == ["apply"] and len(args) == 3 and args[1] == "-f":
        if not os.path.exists(args[2]):
            die(f"apply: {args[2]} does not exist")
        event(cmd="kubectl-apply", file=os.path.basename(args[2]))
        return
    if args == ["get", "nodes", "-o", "json"]:
        s = state()
        def item(name, n):
            spec = {"providerID": n["providerID"]} if n.get("providerID") else {}
            ready = "True" if n.get("ready") else "False"
            return {"metadata": {"name": name}, "spec": spec, "status": {"conditions": [{"type": "Ready", "status": ready}]}}
        items = [item(name, n) for name, n in s["nodes"].items()]
        print(json.dumps({"kind": "List", "items": items}))
        return
    if args[:2] == ["delete", "node"] and len(args) == 4 and args[3] == "--ignore-not-found":
        state(lambda s: s["nodes"].pop(args[2], None))
        event(cmd="kubectl-delete-node", target=args[2])
        return
    if args[:1] == ["cordon"] and len(args) == 2:
        event(cmd="kubectl-cordon", target=args[1])
        return
    if args[:1] == ["drain"] and len(args) == 6 and set(args[2:5]) == {"--ignore-daemonsets", "--delete-emptydir-data", "--force"} and args[5].startswith("--timeout="):
        event(cmd="kubectl-drain", target=args[1])
        return
    die(f"unknown command {' '.join(args)!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
