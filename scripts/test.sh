#!/usr/bin/env bash
# The project's test command (README): every crate's unit, integration, crash and fault
# tests. Tests that need root (tmpfs for disk-full) run as root in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Python gRPC client test runs against grpcio from PyPI, in a venv under target/.
if [ ! -x target/pyvenv/bin/python ] || ! target/pyvenv/bin/python -c "import grpc, grpc_tools" 2>/dev/null; then
  rm -rf target/pyvenv
  mkdir -p target
  if ! python3 -m venv target/pyvenv; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    python3 -m venv target/pyvenv
  fi
  target/pyvenv/bin/pip install -q grpcio grpcio-tools
fi

cargo test --workspace --locked "$@"
