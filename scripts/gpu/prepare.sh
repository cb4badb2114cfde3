#!/usr/bin/env bash
# Run on the development machine before a GPU session. The GPU machine has no Rust toolchain
# and no network, and receives only the git working tree plus named git-ignored folders, at
# most 64 MiB in all; this builds everything it needs into those folders:
#   .gpu/bin.tar.xz  the stripped release binaries (features cuda, debug = false): the test
#                    executables (tests/<name>), gpu_smoke, gpu_bench and bench_efla. PTX for
#                    sm_80 / sm_90 is embedded, so xz shrinks them several times over;
#                    scripts/gpu/run.sh unpacks the archive with tar + xz (or Python's lzma);
#                    .gpu/build.txt says when and from which commit they were built.
#   .whl/            the pure-Python peer wheels (flash-linear-attention and einops, which it
#                    imports; accelerated-scan)
#   .gl/             the Vulkan loader packages, so wgpu reaches the NVIDIA driver there
# and reports the size of what travels (working tree + .gpu + .whl + .gl), failing when it is
# over the limit. Then, on the GPU machine, carrying .gpu .whl .gl:
#   scripts/gpu/run.sh smoke tests        # then: scripts/gpu/run.sh bench sanitize
# (phases and time budgets: see run.sh). Here, the same phases on the CUDA emulator and
# lavapipe: scripts/gpu/run.sh --emu all.
#
# Options: --no-fetch (build only: keep .whl and .gl as they are).
set -euo pipefail
cd "$(dirname "$0")/../.."
fetch=1
for a in "$@"; do
  case $a in
    --no-fetch) fetch=0 ;;
    *) echo "usage: scripts/gpu/prepare.sh [--no-fetch]" >&2; exit 2 ;;
  esac
done
limit=$((64 << 20))
# nvcc on PATH (the crate embeds PTX built at compile time); setup's messages go to stderr
LINREC_CUDA_EMU=0 source scripts/setup.sh
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_TERM_COLOR=never

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin/tests" .gpu
# copies the executables of cargo's JSON messages on stdin into $stage/bin (tests: bin/tests)
collect='
import json, os, shutil, sys
dst = sys.argv[1]
EXAMPLES = ("gpu_smoke", "gpu_bench", "bench_efla")
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind, test = m["target"]["kind"], m["profile"]["test"]
    if kind == ["example"] and not test and m["target"]["name"] in EXAMPLES:
        path = os.path.join(dst, m["target"]["name"])
    elif kind == ["test"]:
        path = os.path.join(dst, "tests", m["target"]["name"])
    else:
        continue
    shutil.copy(m["executable"], path)
    print("  ", os.path.relpath(path, dst))
'
echo "prepare: test executables (release, features cuda)"
cargo test --release --features cuda --no-run --tests --message-format=json-render-diagnostics \
  | python3 -c "$collect" "$stage/bin"
echo "prepare: gpu_smoke, gpu_bench, bench_efla"
cargo build --release --features cuda --message-format=json-render-diagnostics \
  --example gpu_smoke --example gpu_bench --example bench_efla \
  | python3 -c "$collect" "$stage/bin"
for b in gpu_smoke gpu_bench bench_efla tests/scan tests/ffm tests/efla tests/selective; do
  [ -x "$stage/bin/$b" ] || { echo "prepare: $b was not built" >&2; exit 1; }
done
mapfile -t exes < <(find "$stage/bin" -type f)
strip "${exes[@]}"
glibc=$(objdump -T "${exes[@]}" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
echo "prepare: binaries need ${glibc:-an unknown glibc} or newer on the GPU machine"
raw=$(du -sb "$stage/bin" | cut -f1)
tar -C "$stage" -cf - bin | xz -9 -T0 > "$stage/bin.tar.xz"
mv "$stage/bin.tar.xz" .gpu/bin.tar.xz
rm -rf .gpu/bin .gpu/tests .gpu/gpu_bench .gpu/bench_efla   # earlier layouts
echo "prepare: .gpu/bin.tar.xz: $(( $(stat -c %s .gpu/bin.tar.xz) >> 20 )) MiB ($((raw >> 20)) MiB unpacked)"
# what run.sh reports in device.txt (the GPU machine may not have the git history)
echo "$(date -u '+%Y-%m-%d %H:%M UTC') from $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes'), $(rustc --version | cut -d' ' -f1-2), features cuda, need ${glibc:-?}" > .gpu/build.txt

if [ "$fetch" = 1 ]; then
  echo "prepare: peer wheels"
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl \
    fla-core==0.6.0 flash-linear-attention==0.6.0 einops==0.8.1 accelerated-scan==0.3.1

  echo "prepare: Vulkan loader"
  mkdir -p .gl /tmp/amd64/partial
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${o[@]}" update -qq >/dev/null
  (cd .gl && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 >/dev/null)
fi

# what travels: the working tree (tracked and untracked, not ignored) plus the three folders
mib() { awk -v b="$1" 'BEGIN { printf "%6.1f MiB", b / 1048576 }'; }
tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
total=$tree
echo "prepare: what travels:"
echo "  working tree  $(mib "$tree")"
for d in .gpu .whl .gl; do
  s=0
  [ -d "$d" ] && s=$(du -sb "$d" | cut -f1)
  total=$((total + s))
  echo "  $(printf %-13s "$d") $(mib "$s")"
done
echo "  total         $(mib "$total") (limit $((limit >> 20)) MiB)"
if [ "$total" -gt "$limit" ]; then
  echo "prepare: over the limit of what travels" >&2
  exit 1
fi
