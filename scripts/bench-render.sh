#!/usr/bin/env bash
# Measures `haimg render --all` on the embedded example as a user runs it: the whole
# process, wall time and peak RSS, over RUNS runs (default 30). Prints a Markdown row.
# Usage: scripts/bench-render.sh [path/to/haimg]   (default: a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
BIN=$(haimg_bin "${1:-}")
RUNS="${RUNS:-30}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
"$BIN" render --all --out "$OUT/warm" >/dev/null 2>&1   # warm the page cache
walls=(); rss=()
for i in $(seq "$RUNS"); do
  /usr/bin/time -f '%e %M' -o "$OUT/t" "$BIN" render --all --out "$OUT/r$i" >/dev/null 2>&1
  read -r w m <"$OUT/t"; walls+=("$w"); rss+=("$m")
done
printf '%s\n' "${walls[@]}" | sort -n >"$OUT/w"; printf '%s\n' "${rss[@]}" | sort -n >"$OUT/m"
med() { sed -n "$(( ($(wc -l <"$1") + 1) / 2 ))p" "$1"; }
echo "| render --all (example, $RUNS runs) | median wall $(med "$OUT/w") s | max wall $(tail -1 "$OUT/w") s | median peak RSS $(( $(med "$OUT/m") / 1024 )) MiB | max peak RSS $(( $(tail -1 "$OUT/m") / 1024 )) MiB |"
