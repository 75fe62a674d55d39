#!/usr/bin/env bash
# Loom models of the task state machine (src/loom_tests.rs), in their own
# target directory so the normal build is not invalidated. Without the
# default features: tokio (behind `http`) has loom paths of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
exec cargo test --release --no-default-features --lib loom_tests -- --test-threads=2 "$@"
