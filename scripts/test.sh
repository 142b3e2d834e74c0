#!/usr/bin/env bash
# The test command: services up, then every test of the workspace (unit and
# integration, against real PostgreSQL and Redis).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services-up.sh
cargo test --workspace --locked "$@"
