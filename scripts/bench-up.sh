#!/usr/bin/env bash
# Measures `haimg up` on the example cluster against a moto server on loopback: API calls
# (counted by tests/doubles/awsproxy.py) and wall time (straight to moto, no proxy), for a
# first `up` (creates everything), a second (changes nothing) and a `down`.
#
#   scripts/bench-up.sh [RUNS]      (default 5; needs scripts/install-test-deps.sh)
#   HAIMG_PROFILE=release scripts/bench-up.sh    (default: the debug build the tests use)
set -euo pipefail

runs=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${HAIMG_VENV:-$HOME/.cache/haimg/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/haimg/target}
profile=${HAIMG_PROFILE:-debug}
if [ "$profile" = release ]; then
    cargo build -q --release --manifest-path "$root/Cargo.toml"
else
    cargo build -q --manifest-path "$root/Cargo.toml"
fi
haimg=$CARGO_TARGET_DIR/$profile/haimg
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_MAX_ATTEMPTS=1 \
    AWS_EC2_METADATA_DISABLED=true AWS_DEFAULT_REGION=us-west-2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A fresh moto with the example's network, instance profiles and image parameter;
# writes $work/cluster.yaml and echoes moto's URL.
fresh_moto() {
    local port url vpc s1 s2 s3 sg ami
    port=$(free_port)
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    pids+=($!)
    url=http://127.0.0.1:$port
    until curl -s "$url" >/dev/null; do sleep 0.1; done
    cli() { "$venv/bin/aws" --endpoint-url "$url" --output text "$@"; }
    vpc=$(cli ec2 create-vpc --cidr-block 10.0.0.0/16 --query Vpc.VpcId)
    s1=$(cli ec2 create-subnet --vpc-id "$vpc" --cidr-block 10.0.1.0/24 --availability-zone us-west-2a --query Subnet.SubnetId)
    s2=$(cli ec2 create-subnet --vpc-id "$vpc" --cidr-block 10.0.2.0/24 --availability-zone us-west-2b --query Subnet.SubnetId)
    s3=$(cli ec2 create-subnet --vpc-id "$vpc" --cidr-block 10.0.3.0/24 --availability-zone us-west-2c --query Subnet.SubnetId)
    sg=$(cli ec2 create-security-group --group-name nodes --description nodes --vpc-id "$vpc" --query GroupId)
    ami=$(cli ec2 describe-images --owners amazon --query 'Images[0].ImageId')
    cli ssm put-parameter --name /haimg/images/ubuntu-20.04-k8s/latest --type String --value "$ami" >/dev/null
    cli iam create-instance-profile --instance-profile-name demo-master >/dev/null
    cli iam create-instance-profile --instance-profile-name demo-worker >/dev/null
    sed -e "s/vpc-0123456789abcdef0/$vpc/" -e "s/subnet-0a1b2c3d4e5f60001/$s1/" \
        -e "s/subnet-0a1b2c3d4e5f60002/$s2/" -e "s/subnet-0a1b2c3d4e5f60003/$s3/" \
        -e "s/sg-0123456789abcdef0/$sg/" "$root/examples/cluster.yaml" >"$work/cluster.yaml"
    echo "$url"
}

ms() { python3 -c 'import sys,time; print(int(time.time()*1000))'; }
timed() { local t0 t1; t0=$(ms); "$@" >/dev/null 2>&1; t1=$(ms); echo $((t1 - t0)); }

# Calls, through the recording proxy.
url=$(fresh_moto)
python3 "$root/tests/doubles/awsproxy.py" "$url" "$work/port" "$work/calls.jsonl" "$work/rules.json" &
pids+=($!)
until [ -s "$work/port" ]; do sleep 0.05; done
proxy=http://127.0.0.1:$(cat "$work/port")
count() {
    python3 - "$work/calls.jsonl" <<'PY'
import json, sys
calls = [json.loads(l)["action"] for l in open(sys.argv[1])]
mut = [c for c in calls if not c.startswith(("Describe", "Get", "List"))]
print(f"{len(calls)} calls, {len(mut)} mutating")
PY
    rm -f "$work/calls.jsonl"
}
AWS_ENDPOINT_URL=$proxy "$haimg" up -c "$work/cluster.yaml" >/dev/null 2>&1
echo "first up:  $(count)"
AWS_ENDPOINT_URL=$proxy "$haimg" up -c "$work/cluster.yaml" >/dev/null 2>&1
echo "second up: $(count)"
AWS_ENDPOINT_URL=$proxy "$haimg" down -c "$work/cluster.yaml" --yes --poll 100ms >/dev/null 2>&1
echo "down:      $(count)"

# Wall time, straight to moto (process start included).
first=() second=() down=()
for _ in $(seq "$runs"); do
    url=$(fresh_moto)
    first+=("$(AWS_ENDPOINT_URL=$url timed "$haimg" up -c "$work/cluster.yaml")")
    second+=("$(AWS_ENDPOINT_URL=$url timed "$haimg" up -c "$work/cluster.yaml")")
    down+=("$(AWS_ENDPOINT_URL=$url timed "$haimg" down -c "$work/cluster.yaml" --yes --poll 100ms)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "wall time over $runs runs, $profile build (median, min..max ms):"
echo "  first up:  $(median "${first[@]}") ms ($(printf '%s\n' "${first[@]}" | sort -n | head -1)..$(printf '%s\n' "${first[@]}" | sort -n | tail -1))"
echo "  second up: $(median "${second[@]}") ms ($(printf '%s\n' "${second[@]}" | sort -n | head -1)..$(printf '%s\n' "${second[@]}" | sort -n | tail -1))"
echo "  down:      $(median "${down[@]}") ms ($(printf '%s\n' "${down[@]}" | sort -n | head -1)..$(printf '%s\n' "${down[@]}" | sort -n | tail -1))"
