#!/usr/bin/env bash
# Build every guest crate (engine addons, examples, test fixtures) to WebAssembly components
# for wasm32-wasip2. Output: target/wasm32-wasip2/release/*.wasm
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "build-addons: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi

packages=()
for manifest in addons/*/Cargo.toml examples/*/Cargo.toml tests/fixtures/*/Cargo.toml; do
    [ -f "$manifest" ] || continue
    name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -n 1)
    packages+=(-p "$name")
done

cargo build --release --target wasm32-wasip2 "${packages[@]}"
ls -l target/wasm32-wasip2/release/*.wasm | awk '{print "  " $5 "\t" $9}'
