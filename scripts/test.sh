#!/usr/bin/env bash
# linrec's whole check, as CI runs it (.ci/run calls exactly this): installs lavapipe and the
# pinned nvcc packages if missing (scripts/setup.sh), then
#   1. formatting, clippy and rustdoc with warnings denied (features wgpu + cuda + candle, the
#      set the tests use; and the library without wgpu), with LINREC_NO_NVCC so that nvcc
#      compiles the kernels once, for the test build;
#   2. every CUDA kernel assembled for sm_80 and sm_90, failing on register spills (the PTX the
#      test build's build script compiled);
#   3. the package: `cargo publish --dry-run`, then the unpacked crate built on its own, with
#      and without feature `cuda`, nvcc hidden (the NVRTC path a user without a toolkit gets);
#   4. every test: WGSL kernels on the best wgpu adapter (lavapipe without a GPU), CUDA kernels
#      on the GPU, or on linrec's CPU emulator where there is none (the long-sequence cases are
#      the `long_*` tests: `cargo test -- long_` runs that group alone);
#   5. the WGSL tests again (long ones aside) on lavapipe opened with WebGPU's default limits
#      (LINREC_WGPU_LIMITS=webgpu: 8 storage buffers per stage, 16 KiB workgroup memory), and
#      on wgpu's GL backend (WGPU_BACKEND=gl: llvmpipe through EGL, no subgroups, no f16);
#   6. feature burn: clippy, and the burn tests on burn's wgpu backend (lavapipe) and ndarray;
#   7. every WGSL kernel translated by naga to SPIR-V, MSL, HLSL and GLSL (tools/shader-check):
#      each declared variant, and each pipeline the tests above built with its run-time
#      constants, whose storage buffers and workgroup memory it counts again.
# Each stage prints its wall time. `LINREC_CI_SKIP=package` skips the package stage.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t_all=$(date +%s)
stage_t0=0
stage_name=""
begin() {
  end_stage
  stage_name=$1
  stage_t0=$(date +%s)
  echo "== $1"
}
end_stage() {
  if [ -n "$stage_name" ]; then echo "== $stage_name: $(($(date +%s) - stage_t0)) s"; fi
  stage_name=""
}
skip() { [[ ",${LINREC_CI_SKIP:-}," == *",$1,"* ]] && echo "== $1: skipped (LINREC_CI_SKIP)"; }
# Run a command with its output in $quiet_log: print the summary lines on success, the whole
# log on failure (and fail).
quiet_log=$(mktemp)
quiet() {
  if "$@" >"$quiet_log" 2>&1; then
    grep -E "^test result|tests run on|tests skipped|kernels \(|^error" "$quiet_log" || true
  else
    cat "$quiet_log"
    echo "== failed: $*"
    exit 1
  fi
}

begin "set-up (lavapipe, nvcc, CUDA emulator)"
source scripts/setup.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
features=cuda,candle
# candle's own CUDA backend (feature candle-cuda) builds candle's kernels with nvcc, which costs
# many minutes and can only run where there is a GPU: linted and tested there only.
if nvidia-smi -L >/dev/null 2>&1; then features=cuda,candle-cuda; fi

begin "format"
cargo fmt --all -- --check

begin "clippy (features $features; and without wgpu)"
# clippy and rustdoc need no PTX: LINREC_NO_NVCC keeps nvcc for the test build alone
LINREC_NO_NVCC=1 cargo clippy --all-targets --features "$features" -- -D warnings
LINREC_NO_NVCC=1 cargo clippy --lib --no-default-features --features cuda,candle -- -D warnings  # no wgpu

begin "rustdoc"
LINREC_NO_NVCC=1 RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features "$features" -q

begin "build the tests (nvcc compiles the CUDA kernels to PTX once, here)"
out_dir=$(cargo test --features "$features" --no-run --message-format=json-render-diagnostics \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "#linrec@" in m["package_id"]:
        print(m["out_dir"])' | tail -1)
[ -n "$out_dir" ] || { echo "no build-script output directory for linrec"; exit 1; }

begin "CUDA kernels: sm_80 / sm_90 assemble and spill check"
scripts/check-cuda.sh --ptx "$out_dir"

# every pipeline the tests build is logged for the translation check (stage 6)
export LINREC_WGPU_PIPELINE_LOG="$root/target/wgpu-pipelines.log"
rm -f "$LINREC_WGPU_PIPELINE_LOG"

begin "tests"
cargo test --features "$features" "$@"

if [ $# -eq 0 ]; then
  begin "WGSL tests on WebGPU's default limits (lavapipe)"
  quiet env LINREC_WGPU_LIMITS=webgpu cargo test --features "$features" -- wgpu --skip long_
  grep -q "WebGPU default limits" "$quiet_log" || { echo "the limits were not applied"; exit 1; }

  begin "WGSL tests on wgpu's GL backend (llvmpipe through EGL)"
  quiet env WGPU_BACKEND=gl cargo test --features "$features" -- wgpu --skip long_
  grep -q "(Gl, " "$quiet_log" || { echo "no GL adapter: the GL stage tested nothing"; exit 1; }
fi

begin "burn (feature burn): clippy, tests on burn's wgpu (lavapipe) and ndarray backends, doc tests"
LINREC_NO_NVCC=1 cargo clippy --all-targets --features burn -- -D warnings
cargo test --features burn --test burn
cargo test --features burn --doc -q burn

begin "WGSL translation to SPIR-V, MSL, HLSL, GLSL (tools/shader-check)"
quiet env CARGO_TARGET_DIR="$root/target/shader-check" cargo run -q --release \
  --manifest-path tools/shader-check/Cargo.toml -- shaders "$LINREC_WGPU_PIPELINE_LOG"
grep -E "^kernel variant|WebGPU defaults" "$quiet_log" | head -60

if ! skip package; then
  begin "package: publish dry run, unpacked crate with and without cuda (no nvcc)"
  cargo publish --dry-run --allow-dirty -q
  cargo package --no-verify --allow-dirty -q   # the .crate file itself (the dry run removes it)
  pkg=$(mktemp -d)
  tar -xzf target/package/linrec-*.crate -C "$pkg"
  (
    cd "$pkg"/linrec-*
    # the user's view: no repository config, no nvcc anywhere
    export CARGO_TARGET_DIR="$root/target" PATH=$(echo "$PATH" | tr ':' '\n' | grep -v "$root/.tools" | paste -sd:)
    unset NVCC CUDA_HOME
    ! command -v nvcc >/dev/null || { echo "nvcc still on PATH"; exit 1; }
    cargo build -q --lib
    cargo build -q --lib --features cuda
  )
  rm -rf "$pkg"
fi
end_stage
echo "== total: $(($(date +%s) - t_all)) s"
