#!/usr/bin/env bash
# Shoal quick start: build the host and the example addon, then let the addon drive a real
# memcached on this machine: the addon's run-spec says how to start it, Shoal's sandboxed
# probe watches it (one fresh instance per call, then a kept instance at probe-loop speed),
# metrics are read through the addon, and the server is stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! command -v memcached >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        say "installing memcached (Debian package)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends memcached
    else
        echo "quickstart: memcached is not installed; run: sudo apt-get install memcached" >&2
        exit 1
    fi
fi

say "building the example addon (wasm32-wasip2) and the shoal CLI"
./scripts/build-addons.sh >/dev/null
cargo build --release -q -p shoal-cli
shoal=target/release/shoal
addon=target/wasm32-wasip2/release/shoal_example_memcached.wasm

say "shoal addon inspect $addon"
"$shoal" addon inspect "$addon"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endpoint="127.0.0.1:$port"

say "run-spec: how the addon says to run memcached on $endpoint"
plan=$("$shoal" addon call "$addon" run-spec --endpoint "$endpoint" --param memory-limit=32MB -o json)
echo "$plan"
mapfile -t cmd < <(python3 -c '
import json, sys
p = json.load(sys.stdin)
print(p["server"]["program"])
for a in p["server"]["args"]:
    print(a)' <<<"$plan")
unprivileged=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["unprivileged"])' <<<"$plan")

say "starting: ${cmd[*]}"
if [ "$unprivileged" = True ] && [ "$(id -u)" = 0 ]; then
    setpriv --reuid=nobody --regid=nogroup --clear-groups -- "${cmd[@]}" &
else
    "${cmd[@]}" &
fi
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done

say "probe through the sandboxed addon"
"$shoal" addon call "$addon" probe --endpoint "$endpoint" -o text

say "1000 probes on one kept addon instance (the probe loop's mode)"
"$shoal" addon call "$addon" probe --endpoint "$endpoint" --live --repeat 1000 -o text >/dev/null

say "metrics"
"$shoal" addon call "$addon" metrics --endpoint "$endpoint" -o text | grep -E 'name:|value:' | paste - - | head -12

say "stopping memcached"
kill "$server"
wait "$server" 2>/dev/null || true
trap - EXIT
echo "done. Next: docs/addon-guide.md to write an addon, docs/wit.md for every hook."
