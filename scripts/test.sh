#!/usr/bin/env bash
# linrec's whole check, as CI runs it (.ci/run calls exactly this): installs lavapipe and the
# pinned nvcc packages if missing (scripts/setup.sh), then
#   1. formatting, clippy (all targets, all features: candle-cuda's kernels are built with the
#      pinned nvcc, see .cargo/config.toml) and rustdoc with warnings denied;
#   2. every CUDA kernel compiled for sm_80 and sm_90, failing on register spills;
#   3. every test: WGSL kernels on the best wgpu adapter (lavapipe without a GPU), CUDA kernels
#      on the GPU, or on linrec's CPU emulator where there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
cargo clippy --all-targets --no-default-features --features cuda,candle -- -D warnings  # no wgpu
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features -q

echo "== CUDA kernels: sm_80 / sm_90 compile and spill check"
scripts/check-cuda.sh

echo "== tests"
# candle's CUDA tests only where there is a GPU (candle's CUDA backend needs the real libraries;
# without one its tests show as ignored with that reason)
features=cuda,candle
if nvidia-smi -L >/dev/null 2>&1; then features=cuda,candle-cuda; fi
cargo test --features "$features" "$@"
