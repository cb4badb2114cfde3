#!/usr/bin/env bash
# linrec on the NVIDIA GPU machine, in phases, each under its own time budget:
#
#   scripts/gpu/run.sh [--emu] PHASE...      PHASE: smoke tests bench sanitize, or all (the
#                                            four in that order; also the default)
#
#   (set-up, every command: unpack .gpu/bin.tar.xz, unpack the Vulkan loader (.gl), point
#    VK_DRIVER_FILES at the NVIDIA ICD, install the wheels (.whl) to /tmp/site, find NVRTC;
#    device.txt: nvidia-smi's device query and where the binaries came from)
#   smoke     (budget  55 s)  gpu_smoke: every op forward + backward at small shapes on CUDA
#                             and on wgpu (Vulkan), each against the f64 reference; together
#                             its cases launch every CUDA kernel. Fails if wgpu ran on a
#                             software adapter instead of the NVIDIA driver
#   tests     (budget 230 s)  every test executable (release; CUDA and wgpu tests, and the
#                             reference tests), in parallel; failures listed with their case,
#                             tests cut off by the budget listed as such
#   bench     (budget 230 s)  in this order, each step given the time left minus what the
#                             later ones are kept: gpu_bench (copy bandwidth, efla, selective,
#                             ffm; then the scan, whose largest shapes cost the most), on CUDA
#                             and on wgpu at the peer shapes; bench_efla (CUDA EFLA / delta);
#                             peers.py (accelerated-scan, the FFM paper's closed form, Mamba's
#                             reference and kernel) and bench_efla.py (fla's chunk_delta_rule),
#                             which need torch with CUDA; then report.py
#   sanitize  (budget 170 s)  compute-sanitizer memcheck, then racecheck, on gpu_smoke
#                             restricted to CUDA (every kernel at least once, small shapes)
#
# The budgets add up to 11.4 minutes, plus 10 to 30 s of set-up per command. A GPU session
# has 15 minutes of device time in all (start-up, every command, idle time) and one command
# may run 10 minutes, so run it as two commands, each carrying .gpu .whl .gl (built here by
# scripts/gpu/prepare.sh: about 13 MiB with the working tree):
#   scripts/gpu/run.sh smoke tests          (at most 5 minutes)
#   scripts/gpu/run.sh bench sanitize       (at most 7 minutes)
# Budgets can be changed with BUDGET_SMOKE, BUDGET_TESTS, BUDGET_BENCH, BUDGET_SANITIZE
# (seconds); BENCH_REPS sets gpu_bench's repetitions (default 5: it moves every tensor to and
# from the device on each call, which at the largest scan shapes costs seconds).
#
# Results go to $OUT (default ./gpu-results), written as each phase goes, so a phase cut off
# by its budget still leaves what it finished; at most these eight files:
#   summary.md     per phase: status, wall time, budget; what was skipped and why
#   device.txt     the device query, the binaries' origin, the adapters smoke ran on
#   smoke.log      gpu_smoke's lines (backend, op, case, errors, PASS / FAIL / SKIP)
#   tests.log      each test executable's output as it finishes, then per executable its
#                  result, its failures with their messages, and what the budget cut off
#   bench.jsonl    every timing (linrec and peers), one JSON object per line
#   report.md      report.py's tables (linrec against the peers, % of copy bandwidth, the
#                  EFLA / fla table) and the bench steps' logs
#   sanitize.log   compute-sanitizer's output per tool
#   plots.tar.gz   report.py's and bench_efla.py's plots (where matplotlib is installed)
# The exit status is 0 when every phase run passed.
#
# --emu (or LINREC_GPU_EMU=1) points the same phases at linrec's CUDA emulator
# (tools/cuda-emu, built if missing) and lavapipe on a machine without a GPU, to check the
# script and the binaries before a GPU session: no nvidia-smi, compute-sanitizer or torch
# there, so those steps say they are skipped and why; bench uses tiny shapes (its timings
# mean nothing); sanitize instead runs the CUDA subset on the emulator in reverse and
# shuffled thread order and checks, with a launch trace (emu_trace.c), that it launches
# every kernel the emulator has. Budgets in emulator mode: smoke 600 s, tests 3000 s, bench
# 600 s, sanitize 900 s (the same variables override them); `all` took 16 minutes on a
# 2-core machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
emu=${LINREC_GPU_EMU:-0}
phases=()
for a in "$@"; do
  case $a in
    --emu) emu=1 ;;
    smoke | tests | bench | sanitize) phases+=("$a") ;;
    all) phases+=(smoke tests bench sanitize) ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $a" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#phases[@]} -gt 0 ] || phases=(smoke tests bench sanitize)

if [ "$emu" = 1 ]; then
  b_smoke=${BUDGET_SMOKE:-600} b_tests=${BUDGET_TESTS:-3000}
  b_bench=${BUDGET_BENCH:-600} b_sanitize=${BUDGET_SANITIZE:-900}
else
  b_smoke=${BUDGET_SMOKE:-55} b_tests=${BUDGET_TESTS:-230}
  b_bench=${BUDGET_BENCH:-230} b_sanitize=${BUDGET_SANITIZE:-170}
fi
reps=${BENCH_REPS:-5}

out=${OUT:-gpu-results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/linrec-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT

say() { echo "run.sh: $*" >&2; }
now() { date +%s; }

# ------------------------------------------------------------------ summary.md

rows=()
notes=()
started=$(date -u '+%Y-%m-%d %H:%M UTC')
mode=$([ "$emu" = 1 ] && echo "emulator (CUDA emulator + lavapipe; timings mean nothing)" || echo "GPU")
write_summary() {
  {
    echo "# linrec GPU run, $started"
    echo
    echo "Mode: $mode. Command: \`scripts/gpu/run.sh $*\`."
    echo
    echo "| phase | status | wall s | budget s |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    if [ ${#notes[@]} -gt 0 ]; then
      echo
      echo "Notes:"
      echo
      printf -- '- %s\n' "${notes[@]}"
    fi
  } > "$out/summary.md"
}
note() {
  notes+=("$*")
  say "$*"
  write_summary "${cmdline[@]}"
}
cmdline=("$@")

# ------------------------------------------------------------------ phases and steps

# P_STATUS: ok, FAILED or CUT OFF (a failure wins); P_DETAIL: what happened, `; `-separated
fail() { P_STATUS=FAILED; P_DETAIL+="${P_DETAIL:+; }$*"; }
cutoff() { [ "$P_STATUS" = FAILED ] || P_STATUS="CUT OFF"; P_DETAIL+="${P_DETAIL:+; }$*"; }
info() { P_DETAIL+="${P_DETAIL:+; }$*"; }
left() { echo $((P_DEADLINE - $(now))); }
# step RESERVE CMD...: run CMD with the time left in the phase minus RESERVE seconds (kept for
# the steps after it); status 124 (or 137) when cut off, without running when no time is left
step() {
  local t=$(($(left) - $1))
  shift
  if [ "$t" -lt 2 ]; then
    echo "run.sh: no time left for: $*" >&2
    return 124
  fi
  timeout -k 10 "$t" "$@"
}
timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }

run_phase() {
  local name=$1 budget=$2 t0
  P_STATUS=ok P_DETAIL=""
  t0=$(now)
  P_DEADLINE=$((t0 + budget))
  rows+=("| $name | running since $(date -u +%H:%M:%S) | | $budget |")
  write_summary "${cmdline[@]}"
  say "== $name (budget ${budget} s)"
  "phase_$name"
  local dt=$(($(now) - t0))
  rows[${#rows[@]} - 1]="| $name | $P_STATUS${P_DETAIL:+: $P_DETAIL} | $dt | $budget |"
  write_summary "${cmdline[@]}"
  say "== $name: $P_STATUS${P_DETAIL:+: $P_DETAIL} (${dt} s)"
  [ "$P_STATUS" = ok ]
}

# ------------------------------------------------------------------ set-up

setup_gpu() {
  # the Vulkan loader (wgpu reaches the NVIDIA driver through it)
  if ls .gl/*.deb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      for f in .gl/*.deb; do dpkg -x "$f" / || fail "dpkg -x $f"; done
      ldconfig
    else
      note "Vulkan loader packages (.gl) not unpacked: not root"
    fi
  else
    note "no .gl/*.deb: the system's Vulkan loader, if any, is used"
  fi
  local icd="" f glx
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
    /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
    /usr/local/share/vulkan/icd.d/nvidia_icd.json; do
    [ -e "$f" ] && { icd=$f; break; }
  done
  if [ -z "$icd" ]; then
    # no ICD file, but the driver's Vulkan library may be there: describe it
    glx=$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia\.so\.0/ {print $NF; exit}')
    if [ -n "$glx" ]; then
      icd=$work/nvidia_icd.json
      printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3"}}\n' \
        "$glx" > "$icd"
      note "no nvidia_icd.json on the machine: wrote one for $glx"
    else
      note "no NVIDIA Vulkan driver found (no nvidia_icd.json, no libGLX_nvidia.so.0): wgpu may not reach the GPU"
    fi
  fi
  [ -n "$icd" ] && export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
  # the driver's cache of compiled PTX, large enough for every module (about 16 MiB of SASS)
  export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-1073741824}
  # the peers' pure-Python wheels
  if ls .whl/*.whl >/dev/null 2>&1; then
    local stamp
    stamp=$(ls -l .whl/*.whl | md5sum | cut -c1-16)
    if [ "$(cat /tmp/site/.linrec-wheels 2>/dev/null)" != "$stamp" ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && echo "$stamp" > /tmp/site/.linrec-wheels \
        || note "installing the wheels (.whl) failed: the peers that need them will be skipped"
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    note "no .whl/*.whl: accelerated-scan and fla are not installed (their timings will say so)"
  fi
  # NVRTC (cudarc loads it only for a module without PTX for this GPU; found where it is)
  local nrtc d
  for d in /usr/local/cuda/lib64 /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib \
    /usr/lib/x86_64-linux-gnu $(python3 -c 'import site; print(*site.getsitepackages())' 2>/dev/null); do
    [ -d "$d" ] || continue
    nrtc=$(find "$d" -maxdepth 4 -name 'libnvrtc.so*' 2>/dev/null | head -1)
    [ -n "$nrtc" ] && break
  done
  [ -n "$nrtc" ] || nrtc=$(timeout 20 find / -name 'libnvrtc.so*' 2>/dev/null | head -1)
  [ -n "$nrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer \
    /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
}

setup_emu() {
  note "emulator mode: CUDA kernels on linrec's CPU emulator (tools/cuda-emu), WGSL on lavapipe"
  note "emulator mode: .gl not unpacked and .whl not installed (the system's Vulkan loader and lavapipe are used; no torch here)"
  local lib=target/cuda-emu/libcuda.so.1
  if [ ! -e "$lib" ] || [ -n "$(find kernels tools/cuda-emu -newer "$lib" -type f 2>/dev/null | head -1)" ]; then
    say "building the CUDA emulator (tools/cuda-emu/build.sh)"
    tools/cuda-emu/build.sh >&2 || fail "building the CUDA emulator"
  fi
  export LD_LIBRARY_PATH="$root/target/cuda-emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LINREC_EMU_KERNELS=$root/target/cuda-emu/kernels
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/linrec-xdg-$(id -u)}
  mkdir -p -m 700 "$XDG_RUNTIME_DIR"
  sanitizer=""
}

# The binaries: .gpu/bin.tar.xz (scripts/gpu/prepare.sh) unpacked once into a cache
unpack() {
  local arc=.gpu/bin.tar.xz cache=${TMPDIR:-/tmp}/linrec-gpu-bin stamp
  if [ ! -e "$arc" ]; then
    fail "no $arc: run scripts/gpu/prepare.sh first and carry .gpu"
    return
  fi
  stamp=$(stat -c '%s %Y' "$arc")
  if [ "$(cat "$cache/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$cache" && mkdir -p "$cache"
    if command -v xz >/dev/null; then
      tar -C "$cache" -xJf "$arc"
    else
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$arc" "$cache"
    fi || { fail "unpacking $arc"; return; }
    echo "$stamp" > "$cache/.stamp"
  fi
  bin=$cache/bin
}

# device.txt: the device query, in every command (the adapters linrec uses are added by smoke)
device_query() {
  {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "binaries: $(cat .gpu/build.txt 2>/dev/null || echo 'no .gpu/build.txt')"
    if [ "$emu" = 1 ]; then
      echo "nvidia-smi: skipped (emulator mode: no NVIDIA driver here)"
    elif command -v nvidia-smi >/dev/null; then
      nvidia-smi -L
      nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit \
        --format=csv 2>&1
    else
      echo "nvidia-smi: not found"
    fi
    echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
  } > "$out/device.txt" 2>&1
}

phase_setup() {
  if [ "$emu" = 1 ]; then setup_emu; else setup_gpu; fi
  device_query
  unpack
}

# ------------------------------------------------------------------ smoke

# CUDA and wgpu in two processes at once: the driver's first compilation of the CUDA modules'
# PTX (some 25 s of CPU on a cold cache) overlaps the Vulkan pipelines'. CUDA's lines go to
# smoke.log as they come, wgpu's follow when it ends.
phase_smoke() {
  local bk rc last
  step 0 "$bin/gpu_smoke" --device cuda > "$out/smoke.log" 2>&1 &
  local cuda_pid=$!
  step 0 "$bin/gpu_smoke" --device wgpu > "$work/smoke-wgpu.log" 2>&1 &
  local wgpu_pid=$!
  for bk in cuda wgpu; do
    if [ $bk = cuda ]; then wait $cuda_pid; else wait $wgpu_pid; fi
    rc=$?
    [ $bk = wgpu ] && cat "$work/smoke-wgpu.log" >> "$out/smoke.log"
    local log=$out/smoke.log
    [ $bk = wgpu ] && log=$work/smoke-wgpu.log
    grep -E "^$bk: " "$log" | sed 's/^/adapter: /' >> "$out/device.txt"
    last=$(grep '^gpu_smoke: ' "$log" | tail -1)
    if timed_out "$rc"; then
      cutoff "$bk cut off after $(grep -cE ' (PASS|FAIL|SKIP)[ :]' "$log") cases"
    elif [ "$rc" != 0 ]; then
      fail "$bk: ${last:-gpu_smoke exited with $rc}: $(grep -E 'FAIL' "$log" | head -3 | tr -s ' ' | tr '\n' ';')"
    else
      info "$bk: ${last#gpu_smoke: }"
    fi
  done
  if [ "$emu" != 1 ] && grep -qiE '^wgpu: .*(llvmpipe|lavapipe|software)' "$out/smoke.log"; then
    fail "wgpu ran on a software adapter, not the NVIDIA Vulkan driver"
  fi
}

# ------------------------------------------------------------------ tests

# Appends the section of test executable $1 (finished with status $2) to tests.log.
test_section() {
  local name=$1 rc=$2 log=$work/tests/$1.log
  {
    echo "== $name: exit $rc after $(($(now) - tests_t0)) s"
    cat "$log"
    echo
  } >> "$out/tests.log"
}

# The end of tests.log: per executable, its result, failures (with their messages) and what
# the budget cut off.
test_summary() {
  local name=$1 rc=$2 log=$work/tests/$1.log res failed unfinished
  res=$(grep '^test result' "$log" | tail -1)
  echo "-- $name: ${res:-no result line} (exit $rc)"
  grep -E '^(cuda|wgpu) tests (run on|skipped)' "$log" | sed 's/^/   /'
  # libtest-mimic pads names: "test <name, padded> ... ok|FAILED|ignored (reason)"
  failed=$(sed -n 's/^test \(.*[^ ]\) *\.\.\. FAILED$/\1/p' "$log")
  if [ -n "$failed" ]; then
    echo "   failed:"
    # libtest-mimic's failures section: "---- name ----" then the message
    awk '/^---- .* ----$/ {on = 1} /^failures:$/ && seen {on = 0} on {print "     " $0} /^failures:$/ {seen = 1}' "$log"
    P_FAILED+=" $(echo "$failed" | sed "s/^/$name::/" | tr '\n' ' ')"
  fi
  if timed_out "$rc"; then
    unfinished=$(grep -vxF -f <(sed -n 's/^test \(.*[^ ]\) *\.\.\. .*/\1/p' "$log") \
      "$work/tests/$name.list" 2>/dev/null)
    echo "   cut off by the budget, not finished: $(echo "$unfinished" | tr '\n' ' ')"
    P_CUT+=" $name($(echo "$unfinished" | grep -c .))"
  fi
  local ign
  ign=$(grep -cE '^test .* \.\.\. ignored' "$log")
  if [ "$ign" -gt 0 ]; then
    echo "   ignored: $ign, most often: $(sed -n 's/^test .* \.\.\. ignored (\(.*\))$/\1/p' "$log" \
      | sort | uniq -c | sort -rn | head -3 | sed 's/^ *//' | tr '\n' ';')"
  fi
}

phase_tests() {
  mkdir -p "$work/tests"
  : > "$out/tests.log"
  tests_t0=$(now)
  local t name names=()
  for t in "$bin"/tests/*; do
    name=$(basename "$t")
    names+=("$name")
    "$t" --list 2>/dev/null | sed -n 's/: test$//p' > "$work/tests/$name.list"
    (
      step 5 "$t" > "$work/tests/$name.log" 2>&1
      echo $? > "$work/tests/$name.rc"
    ) &
  done
  # sections in the order the executables finish
  local pending=("${names[@]}") still
  while [ ${#pending[@]} -gt 0 ]; do
    sleep 2
    still=()
    for name in "${pending[@]}"; do
      if [ -e "$work/tests/$name.rc" ]; then
        test_section "$name" "$(cat "$work/tests/$name.rc")"
      else
        still+=("$name")
      fi
    done
    pending=("${still[@]}")
  done
  wait
  P_FAILED="" P_CUT=""
  {
    echo "== summary"
    for name in "${names[@]}"; do test_summary "$name" "$(cat "$work/tests/$name.rc")"; done
  } > "$work/tests/summary"
  cat "$work/tests/summary" >> "$out/tests.log"
  local passed
  passed=$(cat "$work"/tests/*.log | grep -cE '^test .* \.\.\. ok$')
  info "${#names[@]} executables, $passed tests passed"
  [ -n "$P_FAILED" ] && fail "failed:$P_FAILED"
  # a backend the tests could not reach (their GPU tests then show as ignored)
  local why
  while read -r why; do
    [ -n "$why" ] && fail "$why"
  done < <(grep -hE '^(cuda|wgpu) tests skipped' "$work"/tests/*.log | sort -u)
  [ -n "$P_CUT" ] && cutoff "cut off (tests not finished):$P_CUT"
  for name in "${names[@]}"; do
    local rc
    rc=$(cat "$work/tests/$name.rc")
    if [ "$rc" != 0 ] && ! timed_out "$rc" && ! grep -q '^test result: FAILED' "$work/tests/$name.log"; then
      fail "$name exited with $rc"
    fi
  done
}

# ------------------------------------------------------------------ bench

# bstep NAME RESERVE CMD...: a bench step, its JSON lines to bench.jsonl, its log to the bench
# log; marks the phase cut off or failed as it ends
bstep() {
  local name=$1 reserve=$2 t0 rc
  shift 2
  t0=$(now)
  echo "== $name: ${*#$bin/}" >> "$blog"
  step "$reserve" "$@" >> "$out/bench.jsonl" 2>> "$blog"
  rc=$?
  echo "-- $name: exit $rc after $(($(now) - t0)) s" >> "$blog"
  if timed_out "$rc"; then cutoff "$name cut off"; elif [ "$rc" != 0 ]; then fail "$name exited with $rc"; fi
}

phase_bench() {
  : > "$out/bench.jsonl"
  mkdir -p "$work/plots" "$work/efla"
  local torch peers=0
  blog=$work/bench.log
  : > "$blog"
  local gb=(--reps "$reps") eb=(--reps 10) quick=() ts=()
  if [ "$emu" = 1 ]; then gb=(--quick --reps 3) eb=(--small --reps 3) quick=(--quick) ts=(--t 100); fi
  # the peers need torch with CUDA: then they are kept 77 s (peers.py 40, fla 32, report 5)
  torch=$(python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__)' 2>&1) \
    && peers=77
  # linrec first; each step leaves the later ones their reserve (s). The scan's largest
  # shapes cost the most (gpu_bench moves its tensors to and from the device on every call),
  # so it runs after the other ops, from the shortest sequence up
  bstep "gpu_bench (copy, efla, selective, ffm)" $((peers + 73)) "$bin/gpu_bench" "${gb[@]}" --only copy,efla,selective,ffm
  bstep "gpu_bench (scan)" $((peers + 28)) "$bin/gpu_bench" "${gb[@]}" --only scan
  bstep bench_efla $((peers + 8)) "$bin/bench_efla" "${eb[@]}"
  if [ "$peers" != 0 ]; then
    echo "torch $torch" >> "$blog"
    bstep peers.py 40 python3 scripts/gpu/peers.py "${quick[@]}"
    # fla's rows go to bench.jsonl as they are measured (its table to stderr: the log)
    bstep "bench_efla.py (fla)" 8 python3 scripts/gpu/bench_efla.py --no-linrec \
      --jsonl "$out/bench.jsonl" --wheels "" --out "$work/efla" --reps 10 "${ts[@]}"
  else
    note "bench: peers.py and bench_efla.py (fla) skipped: torch with CUDA is not importable ($(echo "$torch" | tail -1))"
    info "peers skipped (no torch with CUDA)"
  fi
  python3 scripts/gpu/report.py --jsonl "$out/bench.jsonl" --device "$out/device.txt" \
    --plots "$work/plots" > "$out/report.md" 2>> "$blog" || fail "report.py failed"
  cp "$work"/efla/*.png "$work/plots/" 2>/dev/null
  {
    echo
    echo "## Bench log"
    echo
    echo '```'
    tail -c 20000 "$blog"
    echo '```'
  } >> "$out/report.md"
  if ls "$work"/plots/*.png >/dev/null 2>&1; then
    tar -C "$work/plots" -czf "$out/plots.tar.gz" .
  else
    note "bench: no plots (matplotlib missing or nothing measured)"
  fi
  info "$(grep -c '"ms"' "$out/bench.jsonl") timings"
}

# ------------------------------------------------------------------ sanitize

# Emulator stand-in for compute-sanitizer: the CUDA subset in reverse and shuffled thread
# order, with every launch traced, and the kernels it launched against all the emulator has.
sanitize_emu() {
  note "sanitize: compute-sanitizer skipped (emulator mode: it needs an NVIDIA GPU); ran the CUDA subset on the emulator instead"
  local log=$out/sanitize.log trace=$work/trace real=$LINREC_EMU_KERNELS rc
  mkdir -p "$trace"
  if ! cc -O2 -shared -fPIC -o "$trace/trace.so" scripts/gpu/emu_trace.c -ldl 2>> "$log"; then
    fail "building scripts/gpu/emu_trace.c"
    return
  fi
  for order in reverse shuffle; do
    echo "== emulator, LINREC_EMU_SCHEDULE=$order: gpu_smoke --device cuda" >> "$log"
    LINREC_EMU_SCHEDULE=$order LINREC_EMU_KERNELS=$trace LINREC_EMU_TRACE_DIR=$real \
      LINREC_EMU_TRACE_LOG=$work/launched.txt \
      step 0 "$bin/gpu_smoke" --device cuda >> "$log" 2>&1
    rc=$?
    echo "exit $rc" >> "$log"
    if timed_out "$rc"; then cutoff "$order order cut off"; break; fi
    [ "$rc" = 0 ] || fail "gpu_smoke failed in $order order"
  done
  nm -D --defined-only "$real"/*.so | awk '$2 == "T" && $3 !~ /^(_Z|linrec_emu)/ {print $3}' \
    | sort -u > "$work/kernels.txt"
  sort -u "$work/launched.txt" > "$work/launched.sorted" 2>/dev/null
  local all got missing
  all=$(wc -l < "$work/kernels.txt")
  got=$(comm -12 "$work/kernels.txt" "$work/launched.sorted" | wc -l)
  missing=$(comm -23 "$work/kernels.txt" "$work/launched.sorted" | tr '\n' ' ')
  echo "== kernel coverage: $got of $all kernels launched${missing:+; never launched: $missing}" >> "$log"
  if [ -n "$missing" ]; then fail "kernels never launched: $missing"; else info "every kernel launched ($got of $all)"; fi
}

phase_sanitize() {
  : > "$out/sanitize.log"
  if [ "$emu" = 1 ]; then
    sanitize_emu
    return
  fi
  if [ -z "$sanitizer" ]; then
    fail "compute-sanitizer not found"
    return
  fi
  local tool rc reserve errs
  for tool in memcheck racecheck; do
    reserve=0
    [ "$tool" = memcheck ] && reserve=80
    echo "== compute-sanitizer --tool $tool: gpu_smoke --device cuda" >> "$out/sanitize.log"
    step "$reserve" "$sanitizer" --tool "$tool" --error-exitcode 9 --print-limit 50 \
      "$bin/gpu_smoke" --device cuda >> "$out/sanitize.log" 2>&1
    rc=$?
    echo "exit $rc" >> "$out/sanitize.log"
    errs=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitize.log" | tail -1 | sed 's/^=* *//')
    if timed_out "$rc"; then
      cutoff "$tool cut off"
    elif [ "$rc" = 9 ]; then
      fail "$tool: ${errs:-errors}"
    elif [ "$rc" != 0 ]; then
      fail "$tool: gpu_smoke exited with $rc"
    else
      info "$tool: ${errs:-clean}"
    fi
  done
}

# ------------------------------------------------------------------ main

status=0
say "results in $out"
P_STATUS=ok P_DETAIL="" P_DEADLINE=$(($(now) + 120))
t0=$(now)
rows+=("| setup | running | | 120 |")
phase_setup
rows[0]="| setup | $P_STATUS${P_DETAIL:+: $P_DETAIL} | $(($(now) - t0)) | 120 |"
write_summary "${cmdline[@]}"
if [ "$P_STATUS" != ok ]; then
  say "set-up failed: $P_DETAIL"
  exit 1
fi
for p in "${phases[@]}"; do
  b=b_$p
  run_phase "$p" "${!b}" || status=1
done
say "summary: $out/summary.md"
cat "$out/summary.md" >&2
exit $status
