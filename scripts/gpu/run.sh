#!/usr/bin/env bash
# One command on the NVIDIA GPU machine (after scripts/gpu/prepare.sh on the development
# machine): every CUDA test against the reference, compute-sanitizer memcheck and racecheck on
# the CUDA tests, linrec's timings (CUDA and WGSL through Vulkan) next to the peers', and the
# report. Results go to $OUT (or ./gpu-results): tests.log, sanitizer.log, linrec.jsonl,
# peers.jsonl, report.md, *.png, efla_bench.{md,json,png} (EFLA / delta rule against fla).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-results}
mkdir -p "$out"
for f in .gl/*.deb; do dpkg -x "$f" / ; done; ldconfig
[ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nrtc=$(find / -name 'libnvrtc.so*' 2>/dev/null | head -1)
[ -n "$nrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi -L | tee "$out/device.txt"
date -u +%Y-%m-%dT%H:%MZ >> "$out/device.txt"

echo "== tests" | tee "$out/tests.log"
for t in .gpu/tests/*; do
  echo "-- $t" >> "$out/tests.log"
  "$t" >> "$out/tests.log" 2>&1; echo "exit $?" >> "$out/tests.log"
done
grep -E "^test result|^exit|run on|skipped" "$out/tests.log"

if [ -z "${SKIP_SANITIZER:-}" ]; then
  echo "== compute-sanitizer (CUDA tests only)" | tee "$out/sanitizer.log"
  for t in .gpu/tests/*; do
    for tool in memcheck racecheck; do
      echo "-- $tool $t" >> "$out/sanitizer.log"
      timeout 1500 compute-sanitizer --tool "$tool" --error-exitcode 9 "$t" cuda --test-threads 1 >> "$out/sanitizer.log" 2>&1
      echo "exit $?" >> "$out/sanitizer.log"
    done
  done
  grep -E "ERROR SUMMARY|^exit|^--" "$out/sanitizer.log"
fi

echo "== timings"
.gpu/gpu_bench ${BENCH_ARGS:-} > "$out/linrec.jsonl"
python3 scripts/gpu/peers.py > "$out/peers.jsonl"
# EFLA / delta rule against flash-linear-attention: efla_bench.{md,json,png} in $out
python3 scripts/gpu/bench_efla.py --bin .gpu/bench_efla --wheels .whl --out "$out"
python3 scripts/gpu/report.py "$out" | tee "$out/report.md"
