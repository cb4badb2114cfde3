#!/usr/bin/env bash
# Installs what linrec's test suite needs on a fresh Debian/Ubuntu machine and prints the
# environment to use (source it: `source scripts/setup.sh`):
#   - lavapipe (Mesa's Vulkan driver on the CPU), so every WGSL kernel runs without a GPU, and
#     Mesa's EGL with llvmpipe, so they run on wgpu's GL backend too;
#   - nvcc / ptxas from pinned pip packages (CUDA 13.0.x) in .tools/nvcc, so the CUDA kernels
#     compile to PTX for sm_80 / sm_90 at build time and can be checked for register spills;
#   - where no NVIDIA driver exists, linrec's CUDA emulator (tools/cuda-emu), so the CUDA
#     kernels and their Rust launch code run on the CPU.
# Needs root (or sudo) for apt-get and network access to Debian's and PyPI's registries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { echo "setup: $*" >&2; }

# --- lavapipe (Vulkan) and llvmpipe through EGL (wgpu's GL backend), both Mesa on the CPU
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libvulkan.so.1' \
  || ! ldconfig -p | grep -q 'libEGL_mesa.so.0'; then
  say "installing lavapipe and Mesa's EGL (mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo=sudo; else
      say "please run as root or install mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri"; exit 1; fi
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 \
    libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/linrec-xdg-$(id -u)}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

# --- nvcc (pinned: the GPU machines' driver is CUDA 13.0, newer PTX may not load there)
nv="$root/.tools/nvcc"
nvbin="$nv/lib/python3*/site-packages/nvidia/cu13/bin"
if ! ls $nvbin/nvcc >/dev/null 2>&1; then
  say "installing nvcc 13.0 from pip into .tools/nvcc"
  python3 -m venv "$nv"
  "$nv/bin/pip" install -q --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
# a fixed name for the toolkit directory (.cargo/config.toml points NVCC there)
ln -sfn "$(cd $(echo $nvbin)/.. && pwd)" "$root/.tools/cuda"
export PATH="$root/.tools/cuda/bin:$PATH"

# --- CUDA: the real driver when there is a GPU, else the emulator
if [ "${LINREC_CUDA_EMU:-auto}" = 1 ] || { [ "${LINREC_CUDA_EMU:-auto}" = auto ] && ! nvidia-smi -L >/dev/null 2>&1; }; then
  "$root/tools/cuda-emu/build.sh" >&2
  export LD_LIBRARY_PATH="$root/target/cuda-emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LINREC_EMU_KERNELS="$root/target/cuda-emu/kernels"
  say "no NVIDIA GPU: CUDA tests run on linrec's CPU emulator"
fi
