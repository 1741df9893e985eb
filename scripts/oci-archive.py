#!/usr/bin/env python3
"""Writes a single-platform image archive, the kind `ctr images import` and `haimg bake`
accept for air-gapped images: an OCI image layout in a tar (the default), or with
`--format docker` what `docker save` writes (manifest.json, RepoTags, uncompressed layers).

    oci-archive.py --name registry.k8s.io/pause:3.9 --out pause.tar [--format oci|docker] \
        --entrypoint /pause --add /path/to/pause:/pause [--add SRC:DST ...] [--env ...]

Each --add puts one file (mode kept) or directory tree into the single layer. The archive is
reproducible: fixed timestamps, sorted entries, no owner names, so its digest is a content
address. The image name goes in the index's `io.containerd.image.name` annotation (OCI), or
in manifest.json's RepoTags (docker). Prints the manifest digest (OCI) or the config's.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def add_tree(tar, src, dst):
    info = tar.gettarinfo(src, arcname=dst.lstrip("/"))
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if info.isfile():
        with open(src, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)
    if os.path.isdir(src) and not os.path.islink(src):
        for name in sorted(os.listdir(src)):
            add_tree(tar, os.path.join(src, name), dst.rstrip("/") + "/" + name)


def parents(dsts):
    out = set()
    for d in dsts:
        parts = d.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out)


def layer(adds):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in parents(dst for _, dst in adds):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for src, dst in sorted(adds, key=lambda a: a[1]):
            add_tree(tar, src, dst)
    diff = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=1) as g:
        g.write(diff)
    return diff, gz.getvalue()


def member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    member(tar, f"blobs/sha256/{digest}", data)
    return f"sha256:{digest}", len(data)


def docker_archive(tar, name, config, diff):
    """What `docker save` writes for one image: the config, one uncompressed layer, and the
    manifest.json naming them with the image's tag."""
    cfg = json.dumps(config, sort_keys=True).encode()
    chex = hashlib.sha256(cfg).hexdigest()
    lhex = hashlib.sha256(diff).hexdigest()
    member(tar, f"{chex}.json", cfg)
    info = tarfile.TarInfo(lhex)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    tar.addfile(info)
    member(tar, f"{lhex}/layer.tar", diff)
    manifest = [{"Config": f"{chex}.json", "RepoTags": [name], "Layers": [f"{lhex}/layer.tar"]}]
    member(tar, "manifest.json", json.dumps(manifest, sort_keys=True).encode())
    repo, _, tag = name.rpartition(":")
    member(tar, "repositories", json.dumps({repo: {tag: lhex}}, sort_keys=True).encode())
    return f"sha256:{chex}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", nargs="*", default=[])
    # One word each, written --cmd=WORD: words start with "-".
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--add", action="append", default=[], help="SRC:DST")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--format", choices=["oci", "docker"], default="oci")
    a = p.parse_args()
    adds = []
    for spec in a.add:
        src, _, dst = spec.partition(":")
        if not dst or not os.path.exists(src):
            sys.exit(f"oci-archive: --add {spec}: want an existing SRC and a DST")
        adds.append((src, dst))
    diff, gz = layer(adds)
    env = a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    config = {
        "architecture": a.arch,
        "os": "linux",
        "config": {"Env": env, "Entrypoint": a.entrypoint or None, "Cmd": a.cmd or None},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]},
        "history": [{"created_by": "haimg scripts/oci-archive.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    tmp = a.out + ".part"
    if a.format == "docker":
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            digest = docker_archive(tar, a.name, config, diff)
        os.replace(tmp, a.out)
        print(digest)
        return
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        cdig, csize = blob(tar, json.dumps(config, sort_keys=True).encode())
        ldig, lsize = blob(tar, gz)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ldig, "size": lsize}],
        }
        mdig, msize = blob(tar, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdig,
                "size": msize,
                "platform": {"architecture": a.arch, "os": "linux"},
                "annotations": {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": a.name},
            }],
        }
        member(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        member(tar, "index.json", json.dumps(index, sort_keys=True).encode())
    os.replace(tmp, a.out)
    print(mdig)


if __name__ == "__main__":
    main()
