#!/usr/bin/env bash
# Run on the development machine before a GPU session: builds everything the GPU machine
# needs (it has no Rust toolchain and no network) into git-ignored folders that travel with
# the working tree:
#   .gpu/      stripped release binaries: the CUDA-enabled test executables and gpu_bench
#   .whl/      the pure-Python peer wheels (flash-linear-attention, accelerated-scan)
#   .gl/       the Vulkan loader packages, so wgpu reaches the NVIDIA driver there
# Then, on the GPU machine: `bash scripts/gpu/run.sh` (see that file).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null   # nvcc on PATH: PTX for sm_80/sm_90 is embedded
mkdir -p .gpu/tests
for d in .gpu .whl .gl; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done

echo "prepare: test executables (release, features cuda)"
cargo test --release --features cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"] and m["profile"]["test"]:
        dst = os.path.join(".gpu/tests", m["target"]["name"])
        shutil.copy(m["executable"], dst)
        print("  ", dst)
'
echo "prepare: gpu_bench, bench_efla"
cargo build -q --release --features cuda --example gpu_bench --example bench_efla
cp target/release/examples/gpu_bench target/release/examples/bench_efla .gpu/
strip .gpu/gpu_bench .gpu/bench_efla .gpu/tests/* 2>/dev/null || true

echo "prepare: peer wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  fla-core==0.6.0 flash-linear-attention==0.6.0 accelerated-scan==0.3.1

echo "prepare: Vulkan loader"
mkdir -p /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq >/dev/null
(cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 >/dev/null)
du -sh .gpu .whl .gl
