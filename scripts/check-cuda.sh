#!/usr/bin/env bash
# Compiles every CUDA kernel for sm_80 and sm_90 with `ptxas -v` and fails on a compile error
# or on any register spill not listed in kernels/spill-exceptions.txt (`<kernel-name> <reason>`
# per line).
#
#   scripts/check-cuda.sh               compile kernels/**/*.cu from source (nvcc --cubin)
#   scripts/check-cuda.sh --ptx DIR     assemble the PTX that build.rs already wrote to DIR
#                                       (`*.sm_80.ptx`, `*.sm_90.ptx`: the crate's OUT_DIR with
#                                       feature `cuda`), so CI does not run nvcc's front end twice
# Jobs run in parallel, one per core.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export root tmp allowed="$root/kernels/spill-exceptions.txt"

ptx_dir=""
if [ "${1:-}" = "--ptx" ]; then ptx_dir=$2; fi

# one job: $1 = input (a .cu file or a .ptx file), $2 = arch; writes $tmp/<id>.{log,spills,status}
one() {
  local in=$1 arch=$2 id log
  id=$(basename "$in" | tr -c 'A-Za-z0-9_.\n' _).$arch
  log="$tmp/$id.log"
  if [[ $in == *.ptx ]]; then
    cmd=(ptxas -v -O3 -arch="$arch" -o /dev/null "$in")
    label=${in##*/}
  else
    cmd=(nvcc --cubin -arch="$arch" -O3 -std=c++17 -Xptxas -v -I "$root/kernels" -o /dev/null "$in")
    label=${in#"$root/"}
  fi
  if ! "${cmd[@]}" >"$log" 2>&1; then
    { echo "check-cuda: $label ($arch) does not compile:"; cat "$log"; } > "$tmp/$id.status"
    return 0
  fi
  # ptxas prints "Compiling entry function 'NAME'" then "N bytes spill stores, M bytes spill loads"
  awk -v file="$label" -v arch="$arch" '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART+1, RLENGTH-2) }
    /spill stores/ { s = $0; sub(/.*stack frame, /, "", s); split(s, w, " ");
                     if (w[1] + 0 > 0 || w[5] + 0 > 0) print fn " " file " " arch ": " s }' "$log" > "$tmp/$id.spills"
  grep -c "Compiling entry function" "$log" > "$tmp/$id.count" || true
}
export -f one

if [ -n "$ptx_dir" ]; then
  ls "$ptx_dir"/*.sm_80.ptx "$ptx_dir"/*.sm_90.ptx >/dev/null  # fails loudly when the build wrote none
  for f in "$ptx_dir"/*.ptx; do
    arch=${f%.ptx}; arch=${arch##*.}
    printf '%s %s\n' "$f" "$arch"
  done
else
  find "$root/kernels" -name '*.cu' | sort | while read -r f; do
    printf '%s sm_80\n%s sm_90\n' "$f" "$f"
  done
fi | xargs -P "$(nproc)" -L 1 bash -c 'one "$1" "$2"' _

status=0
cat "$tmp"/*.status 2>/dev/null && status=1
while read -r kname rest; do
  [ -n "$kname" ] || continue
  if [ -f "$allowed" ] && grep -q "^$kname " "$allowed"; then
    echo "check-cuda: allowed spill: $kname $rest"
  else
    echo "check-cuda: register spill: $kname $rest"; status=1
  fi
done < <(cat "$tmp"/*.spills 2>/dev/null)
n=$(cat "$tmp"/*.count 2>/dev/null | awk '{s += $1} END {print s + 0}')
echo "check-cuda: $n kernel builds (sm_80 + sm_90) checked, status $status"
exit $status
