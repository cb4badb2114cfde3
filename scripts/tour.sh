#!/usr/bin/env bash
# The tour: every linrec op on the best available device (a CUDA GPU, else a wgpu adapter —
# lavapipe on a machine without a GPU — else the CPU reference), checked against the f64
# reference, with device time and throughput. Installs lavapipe and nvcc if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
LINREC_CUDA_EMU=0 source scripts/setup.sh   # never tour on the emulator: it is for tests
exec cargo run -q --release --features cuda --example tour -- "$@"
