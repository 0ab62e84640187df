#!/usr/bin/env bash
# Shoal's test suite: build every addon to wasm, then run all host tests against real engine
# processes (memcached today) started on free loopback ports by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v memcached >/dev/null || missing+=(memcached)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: missing engine binaries: ${missing[*]}" >&2
    echo "  install them with: apt-get install -y ${missing[*]}   (or run .ci/run, which does it)" >&2
    exit 1
fi

./scripts/build-addons.sh
# The workspace's default members: the host crates, the SDK (its logic tests run natively)
# and the end-to-end tests. Guest crates are exercised through their .wasm builds.
cargo test --release --features shoal-sdk/postgres "$@"
