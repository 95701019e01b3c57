#!/usr/bin/env bash
# Install a Prometheus server for the metrics test (tests/integration/test_observability.py) and for scraping a local
# run: Debian's `prometheus` package. Prints the binary's path; exits non-zero (saying why) where it cannot install.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  command -v prometheus
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_prometheus.sh: no apt-get here; install Prometheus (https://prometheus.io/download/) by hand" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_prometheus.sh: needs root (or password-less sudo) for apt-get install prometheus" >&2
    exit 1
  fi
fi
# On a host with systemd the package also starts a system Prometheus on :9090; the test runs its own on a free port.
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q prometheus >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q prometheus >/dev/null; }
command -v prometheus
