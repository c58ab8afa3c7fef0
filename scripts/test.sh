#!/usr/bin/env bash
# The test command: installs missing prerequisites, then runs every test
# (unit tests and the integration suite against a real primary + replica).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh --tests
cargo test --lib --bins --tests
