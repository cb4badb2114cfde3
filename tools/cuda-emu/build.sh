#!/usr/bin/env bash
# Build linrec's CUDA emulator into target/cuda-emu/: a fake libcuda.so.1 and one shared
# object per kernels/**/*.cu module, compiled as host C++ (as many at once as there are cores;
# a module newer than its sources and the emulator headers is kept). Then run the CUDA tests with
#   LD_LIBRARY_PATH=$PWD/target/cuda-emu LINREC_EMU_KERNELS=$PWD/target/cuda-emu/kernels \
#     cargo test --features cuda
# (the build needs nvcc on PATH so the crate embeds PTX; the emulator ignores the PTX and
# runs these host builds of the same sources).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/target/cuda-emu"
mkdir -p "$out/kernels"
export CXX=${CXX:-g++} root out
flags="-std=c++20 -O2 -g -fPIC -shared -pthread -w"
export flags
# newer than every header a module can include (the emulator's and kernels/**/*.cuh; not
# fake_cuda.cpp, the driver side, which no module includes)
newest_header=$(find "$root/tools/cuda-emu" "$root/kernels" \( -name '*.h' -o -name '*.cuh' \) -printf '%T@\n' | sort -n | tail -1)
export newest_header
build_one() {
  local f=$1 rel name so
  rel=${f#"$root/kernels/"}
  name=${rel//\//__}
  so="$out/kernels/${name%.cu}.so"
  if [ -e "$so" ] && [ "$(stat -c %Y "$so")" -ge "$(stat -c %Y "$f")" ] \
      && [ "$(stat -c %Y "$so")" -ge "${newest_header%.*}" ]; then
    return 0
  fi
  # shellcheck disable=SC2086
  "$CXX" $flags -x c++ -include "$root/tools/cuda-emu/emu.h" -I "$root/kernels" -o "$so.tmp" "$f"
  mv "$so.tmp" "$so"
}
export -f build_one
# shellcheck disable=SC2086
"$CXX" $flags -o "$out/libcuda.so.1" "$root/tools/cuda-emu/fake_cuda.cpp" -ldl
ln -sf libcuda.so.1 "$out/libcuda.so"
find "$root/kernels" -name '*.cu' | sort | xargs -P "$(nproc)" -I{} bash -c 'build_one "$1"' _ {}
echo "cuda-emu: built $(ls "$out/kernels" | grep -c '\.so$') kernel modules in $out"
