# shellcheck shell=bash
# Shared by the bench scripts (sourced from the repository's root, never run).

# haimg_bin [PATH]: PATH when given, else a release build of this checkout.
haimg_bin() {
  if [ -n "${1:-}" ]; then
    echo "$1"
    return
  fi
  cargo build --release -q >&2
  echo "${CARGO_TARGET_DIR:-target}/release/haimg"
}

# lab_scratch BIN: a scratch directory with a copy of examples/lab.yaml ($work, the lab's
# state in $state), the lab brought down and the directory removed on exit.
lab_scratch() {
  lab_bin="$1"
  work=$(mktemp -d)
  cp examples/lab.yaml "$work/"
  state="$work/state"
  trap '"$lab_bin" lab down -c "$work/lab.yaml" --state "$state" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
}
