#!/usr/bin/env bash
# Local-mode measurements: create-to-ready time of 3-node PostgreSQL clusters, and the
# resident memory of `shoal serve` (the host, not the databases) with N clusters running and
# being probed every second. Uses a throwaway home and port range; cleans up after itself.
#   scripts/bench-local.sh [CLUSTERS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}

./scripts/build-addons.sh >/dev/null
cargo build --release -q -p shoal-cli
shoal="$PWD/target/release/shoal"
home=$(mktemp -d /tmp/shoal-bench.XXXXXX)
export SHOAL_HOME="$home"
mkdir -p "$home/addons"
cp target/wasm32-wasip2/release/shoal_addon_postgresql.wasm "$home/addons/"
printf 'port_range = [22000, 22999]\n' > "$home/config.toml"
"$shoal" serve >"$home/serve.log" 2>&1 &
serve=$!
cleanup() {
    for c in $("$shoal" cluster list -o json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(c["name"] for c in json.load(sys.stdin)))'); do
        "$shoal" cluster delete "$c" --purge --yes >/dev/null 2>&1 || true
    done
    kill "$serve" 2>/dev/null || true
    # The stable endpoints' own process outlives the host by design.
    for p in "$home"/endpoints/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
    rm -rf "$home"
}
trap cleanup EXIT
for _ in $(seq 100); do "$shoal" cluster engines >/dev/null 2>&1 && break; sleep 0.1; done

rss() { awk '/VmRSS/ {print $2}' "/proc/$serve/status"; }
echo "shoal serve RSS before any cluster: $(rss) KiB"
times=()
for i in $(seq "$n"); do
    start=$(date +%s.%N)
    "$shoal" cluster create "c$i" --engine postgresql --replicas 3 --memory 128Mi >/dev/null 2>&1
    end=$(date +%s.%N)
    times+=("$(python3 -c "print(round($end - $start, 3))")")
done
sleep 5
echo "create-to-ready of a 3-node cluster (s): ${times[*]}"
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "  median %.2f s, max %.2f s over %d clusters\n", a[int((NR+1)/2)], a[NR], NR}'
echo "shoal serve RSS with $n clusters ($((n * 3)) instances) running and probed: $(rss) KiB"
"$shoal" cluster list | head -3
