#!/usr/bin/env bash
# Build linrec's CUDA emulator into target/cuda-emu/: a fake libcuda.so.1 and one shared
# object per kernels/**/*.cu module, compiled as host C++. Then run the CUDA tests with
#   LD_LIBRARY_PATH=$PWD/target/cuda-emu LINREC_EMU_KERNELS=$PWD/target/cuda-emu/kernels \
#     cargo test --features cuda
# (the build needs nvcc on PATH so the crate embeds PTX; the emulator ignores the PTX and
# runs these host builds of the same sources).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/target/cuda-emu"
mkdir -p "$out/kernels"
cxx=${CXX:-g++}
flags=(-std=c++20 -O2 -g -fPIC -shared -pthread -w)
"$cxx" "${flags[@]}" -o "$out/libcuda.so.1" "$root/tools/cuda-emu/fake_cuda.cpp" -ldl
ln -sf libcuda.so.1 "$out/libcuda.so"
find "$root/kernels" -name '*.cu' | sort | while read -r f; do
  rel=${f#"$root/kernels/"}
  name=${rel//\//__}
  "$cxx" "${flags[@]}" -x c++ -include "$root/tools/cuda-emu/emu.h" -I "$root/kernels" \
    -o "$out/kernels/${name%.cu}.so" "$f"
done
echo "cuda-emu: built $(ls "$out/kernels" | wc -l) kernel modules in $out"
