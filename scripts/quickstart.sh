#!/usr/bin/env bash
# Shoal quick start (local mode): install what is missing, build Shoal and its PostgreSQL
# addon, start `shoal serve` on its embedded default (this machine, real processes, state in
# SQLite), create a 3-node PostgreSQL cluster `demo` and show how to connect to it.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! [ -x /usr/lib/postgresql/15/bin/postgres ] || ! command -v psql >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        say "installing PostgreSQL 15 (Debian packages)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql postgresql-client
    else
        echo "quickstart: PostgreSQL 15 is missing; run: sudo apt-get install postgresql postgresql-client" >&2
        exit 1
    fi
fi

say "building the addons (wasm32-wasip2) and the shoal CLI (the first build takes minutes)"
./scripts/build-addons.sh >/dev/null
cargo build --release -q -p shoal-cli
shoal="$PWD/target/release/shoal"

if [ -n "${SHOAL_HOME:-}" ]; then
    home="$SHOAL_HOME"
elif [ "$(id -u)" = 0 ]; then
    home=/var/lib/shoal
else
    home="${XDG_DATA_HOME:-$HOME/.local/share}/shoal"
fi
export SHOAL_HOME="$home"
mkdir -p "$home/addons"
# Every engine addon (PostgreSQL, Redis, MariaDB, etcd, ZooKeeper): creating a cluster of another
# engine needs only its packages (the error names them).
for engine in postgresql redis mysql etcd zookeeper; do
    install -m 0644 "target/wasm32-wasip2/release/shoal_addon_$engine.wasm" "$home/addons/$engine.wasm"
done

if "$shoal" cluster engines >/dev/null 2>&1; then
    say "shoal serve is already running for $home"
else
    say "starting shoal serve (home $home, log $home/serve.log)"
    setsid nohup "$shoal" serve >>"$home/serve.log" 2>&1 < /dev/null &
    for _ in $(seq 150); do
        "$shoal" cluster engines >/dev/null 2>&1 && break
        sleep 0.2
    done
    "$shoal" cluster engines >/dev/null || { tail -20 "$home/serve.log" >&2; exit 1; }
fi
"$shoal" cluster engines

if "$shoal" cluster describe demo >/dev/null 2>&1; then
    say "cluster demo exists already"
else
    say "shoal cluster create demo --engine postgresql --replicas 3 --memory 512Mi"
    "$shoal" cluster create demo --engine postgresql --replicas 3 --memory 512Mi
fi

sleep 1
say "shoal cluster describe demo"
"$shoal" cluster describe demo

uri=$("$shoal" cluster connect demo | head -n 1)
say "a write on the primary, read back through psql"
psql "$uri" -Atq -c "CREATE TABLE IF NOT EXISTS hello (said text); INSERT INTO hello VALUES ('hello from Shoal'); SELECT said FROM hello ORDER BY 1 LIMIT 1"

cat <<TXT

Connect:   $uri
           (or: SHOAL_HOME=$home $shoal cluster connect demo --shell)
More:      export SHOAL_HOME=$home PATH=$(dirname "$shoal"):\$PATH
           shoal cluster list | describe demo | events demo | logs demo -f
           shoal cluster scale demo --replicas 5 | restart demo | stop demo | start demo
Clean up:  shoal cluster delete demo --purge --yes; pkill -f 'shoal serve'; pkill -f 'shoal endpoints'
TXT
