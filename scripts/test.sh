#!/usr/bin/env bash
# The test command: services up, the binaries built (the integration tests
# run the real `provision` and `provision-worker`, which `cargo test` does
# not build for another package), then every test of the workspace against
# real PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services-up.sh
cargo build --locked --bins
cargo test --workspace --locked "$@"
