#!/usr/bin/env bash
# The test command: services up, the platform model's virtualenv (pinned,
# from PyPI, kept under target/ and made again only when its requirements
# change), the binaries built (the integration tests run the real
# `provision` and `provision-worker`, which `cargo test` does not build for
# another package), headless Chromium for the dashboard's browser tests,
# then every test of the workspace against real PostgreSQL, Redis and the
# platform model's Django.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services-up.sh
scripts/browser-deps.sh
PLATFORM_PYTHON=$(scripts/platform-venv.sh)
export PLATFORM_PYTHON
cargo build --locked --bins
cargo test --workspace --locked "$@"
