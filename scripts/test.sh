#!/usr/bin/env bash
# The project's test command (README): every crate's unit, integration, crash and fault
# tests. Tests that need root (tmpfs for disk-full) run as root in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
