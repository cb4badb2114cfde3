#!/usr/bin/env bash
# Compiles every kernels/**/*.cu for sm_80 and sm_90 with `ptxas -v` and fails on a compile
# error or on any register spill not listed in kernels/spill-exceptions.txt
# (`<kernel-name> <reason>` per line).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
allowed="$root/kernels/spill-exceptions.txt"
status=0
n=0
while read -r f; do
  for arch in sm_80 sm_90; do
    log="$tmp/log"
    if ! nvcc --cubin -arch="$arch" -O3 -std=c++17 -Xptxas -v -I "$root/kernels" \
        -o "$tmp/out.cubin" "$f" >"$log" 2>&1; then
      echo "check-cuda: ${f#"$root/"} ($arch) does not compile:"; cat "$log"; status=1; continue
    fi
    # ptxas prints "Compiling entry function 'NAME'" then "N bytes spill stores, M bytes spill loads"
    awk -v file="${f#"$root/"}" -v arch="$arch" '
      /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART+1, RLENGTH-2) }
      /spill stores/ { s = $0; sub(/.*stack frame, /, "", s); split(s, w, " ");
                       if (w[1] + 0 > 0 || w[5] + 0 > 0) print fn " " file " " arch ": " s }' "$log" > "$tmp/spills"
    while read -r kname rest; do
      [ -n "$kname" ] || continue
      if [ -f "$allowed" ] && grep -q "^$kname " "$allowed"; then
        echo "check-cuda: allowed spill: $kname $rest"
      else
        echo "check-cuda: register spill: $kname $rest"; status=1
      fi
    done < "$tmp/spills"
    n=$((n + $(grep -c "Compiling entry function" "$log" || true)))
  done
done < <(find "$root/kernels" -name '*.cu' | sort)
echo "check-cuda: $n kernel builds (sm_80 + sm_90) checked, status $status"
exit $status
