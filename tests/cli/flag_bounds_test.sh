#!/usr/bin/env bash
# Every numeric flag of litestage-server, litestage-run, litestage-cli,
# litestage-eval, litestage-search and the benchmarks engine_bench and stages_bench at and past its bounds (kernels_bench
# takes only Google Benchmark's own flags), on the real binaries: out-of-range, huge, negative,
# inf, nan and non-numbers must exit non-zero (never by a signal, never hang)
# with a message naming the flag; the boundary values themselves must get
# past flag validation. Bounds: docs/server.md, "Limits".
# Usage: flag_bounds_test.sh BIN_DIR
set -uo pipefail
dir="${1:?usage: flag_bounds_test.sh BIN_DIR}"
failures=0
checks=0
pass() { checks=$((checks + 1)); }
fail() { echo "FAIL: $1"; failures=$((failures + 1)); }
work="$(mktemp -d "${TMPDIR:-/tmp}/litestage_flag_bounds.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Runs a binary with a timeout; sets rc and err (stderr + stdout).
run() {
  err="$(timeout 30 "$@" 2>&1)"
  rc=$?
}

# The prefix that makes each binary fail fast right after flag validation:
# a model path that does not exist, or an unreachable server.
prefix_for() {
  case "$1" in
    litestage-server) echo "--model=$work/absent --port=0 --metrics-port=0" ;;
    litestage-run) echo "--model=$work/absent --prompt=x" ;;
    litestage-cli) echo "health --target=127.0.0.1:1 --timeout=2" ;;
    litestage-eval) echo "--model=$work/absent --dataset=$work/absent" ;;
    litestage-search)
      echo "--model=$work/absent --dataset=$work/absent --out=$work/p.json" ;;
    engine_bench) echo "--models-dir=$work/absent --bandwidth-mb=0" ;;
    stages_bench) echo "--model=$work/absent" ;;
  esac
}

# expect_rejected BINARY FLAG VALUE: non-zero, no signal, message names FLAG.
expect_rejected() {
  local binary="$1" flag="$2" value="$3"
  # shellcheck disable=SC2046
  run "$dir/$binary" $(prefix_for "$binary") "--$flag=$value"
  local name_re="${flag//-/[-_]}"
  if [ "$rc" -eq 124 ]; then
    fail "$binary --$flag=$value: timed out"
  elif [ "$rc" -ge 128 ]; then
    fail "$binary --$flag=$value: killed by signal $((rc - 128)): $err"
  elif [ "$rc" -eq 0 ]; then
    fail "$binary --$flag=$value: accepted (exit 0)"
  elif ! [[ "$err" =~ $name_re ]]; then
    fail "$binary --$flag=$value: message does not name the flag: $err"
  else
    pass
  fi
}

# expect_accepted BINARY FLAG VALUE: gets past flag validation (then fails on
# the absent model / unreachable server, not on the flag).
expect_accepted() {
  local binary="$1" flag="$2" value="$3"
  # shellcheck disable=SC2046
  run "$dir/$binary" $(prefix_for "$binary") "--$flag=$value"
  if [ "$rc" -eq 124 ] || [ "$rc" -ge 128 ]; then
    fail "$binary --$flag=$value: rc $rc: $err"
  elif [[ "$err" == *"out of range"* || "$err" == *"Illegal value"* ]]; then
    fail "$binary --$flag=$value: a valid bound was rejected: $err"
  else
    pass
  fi
}

# int_flag BINARY FLAG LO HI
int_flag() {
  local binary="$1" flag="$2" lo="$3" hi="$4"
  expect_accepted "$binary" "$flag" "$lo"
  expect_accepted "$binary" "$flag" "$hi"
  for value in "$((lo - 1))" "$((hi + 1))" 9223372036854775807 \
               -9223372036854775808 99999999999999999999 inf nan abc ""; do
    expect_rejected "$binary" "$flag" "$value"
  done
}

# double_flag BINARY FLAG LO HI JUST_BELOW JUST_ABOVE
double_flag() {
  local binary="$1" flag="$2" lo="$3" hi="$4" below="$5" above="$6"
  expect_accepted "$binary" "$flag" "$lo"
  expect_accepted "$binary" "$flag" "$hi"
  for value in "$below" "$above" 1e300 -1e300 inf -inf nan abc; do
    expect_rejected "$binary" "$flag" "$value"
  done
}

for b in litestage-server litestage-run litestage-cli litestage-eval \
         litestage-search engine_bench \
         stages_bench; do
  [ -x "$dir/$b" ] || { echo "FAIL: $dir/$b is missing"; exit 1; }
done

# litestage-server
int_flag litestage-server port 0 65535
int_flag litestage-server metrics-port 0 65535
int_flag litestage-server threads 0 1024
int_flag litestage-server max-queue 1 65536
int_flag litestage-server max-batch 1 4096
int_flag litestage-server kv-cache-tokens 1 1073741824
int_flag litestage-server max-new-tokens 1 1048576
double_flag litestage-server grace-period 0 3600 -0.001 3600.001

# litestage-run
int_flag litestage-run max-new-tokens 0 1048576
double_flag litestage-run temperature 0 100 -0.001 100.001
int_flag litestage-run top-k 0 1048576
double_flag litestage-run top-p 0 1 -0.001 1.001
int_flag litestage-run threads 0 1024
int_flag litestage-run kv-cache-tokens 1 1073741824
int_flag litestage-run early-exit-window -1 4096
double_flag litestage-run early-exit-threshold -1000000 1000000 -1000000.1 1000000.1
int_flag litestage-run early-exit-min-tokens 0 1048576
int_flag litestage-run stage-max-new-tokens 0 1048576
int_flag litestage-run importance-limit 0 1048576

# litestage-cli (timeout's lower bound 0 is itself rejected: must be positive)
double_flag litestage-cli timeout 0.001 86400 0 86400.001
int_flag litestage-cli early-exit-window -1 4096
double_flag litestage-cli early-exit-threshold -1000000 1000000 -1000000.1 1000000.1
int_flag litestage-cli early-exit-min-tokens 0 1048576
int_flag litestage-cli max-new-tokens 0 1048576
double_flag litestage-cli temperature 0 100 -0.001 100.001
int_flag litestage-cli top-k 0 1048576
double_flag litestage-cli top-p 0 1 -0.001 1.001
int_flag litestage-cli concurrency 1 1024
int_flag litestage-cli requests 0 1048576
double_flag litestage-cli duration 0 86400 -0.001 86400.001
int_flag litestage-cli questions-limit 0 1048576

# litestage-eval
int_flag litestage-eval limit 0 1048576
int_flag litestage-eval offset 0 1048576
int_flag litestage-eval calibration 0 1048576
int_flag litestage-eval threads 0 1024
int_flag litestage-eval max-new-tokens 0 1048576
int_flag litestage-eval batch 0 1024
int_flag litestage-eval latency-questions 1 1048576
int_flag litestage-eval kv-cache-tokens 0 1073741824

# litestage-search (--max-skip's model bound, 2 * layers, is checked after
# loading; the list flags are checked per element)
int_flag litestage-search calibration 1 1048576
int_flag litestage-search search 1 1048576
double_flag litestage-search epsilon 0 1 -0.001 1.001
int_flag litestage-search max-skip 0 1048576
int_flag litestage-search seed -1 4294967295
int_flag litestage-search offset 0 1048576
int_flag litestage-search threads 0 1024
int_flag litestage-search max-new-tokens 0 1048576
int_flag litestage-search batch 0 1024
int_flag litestage-search latency-questions 1 1048576
int_flag litestage-search kv-cache-tokens 1 1073741824
expect_accepted litestage-search early-exit-windows 1,4096
for value in 0 4097 -1 4,abc 1e300 nan; do
  expect_rejected litestage-search early-exit-windows "$value"
done
expect_accepted litestage-search early-exit-quantiles 0,1
for value in -0.001 1.001 nan inf 0.1,abc; do
  expect_rejected litestage-search early-exit-quantiles "$value"
done
expect_rejected litestage-search metric speed

# Benchmarks. bandwidth-mb's upper bound is not run: it allocates that much.
int_flag engine_bench prefill-tokens 1 1048576
int_flag engine_bench decode-prompt-tokens 1 1048576
int_flag engine_bench new-tokens 1 1048576
int_flag engine_bench reps 1 1048576
int_flag engine_bench warmup 0 1048576
int_flag engine_bench bandwidth-passes 1 1048576
expect_accepted engine_bench bandwidth-mb 0
for value in -1 4097 9223372036854775807 inf nan abc ""; do
  expect_rejected engine_bench bandwidth-mb "$value"
done
int_flag stages_bench num-questions 1 1048576
int_flag stages_bench calibration-questions 1 1048576
int_flag stages_bench stage-max-new-tokens 1 1048576
int_flag stages_bench early-exit-window 1 4096
double_flag stages_bench early-exit-quantile 0 1 -0.001 1.001
int_flag stages_bench reps 1 1048576
int_flag stages_bench threads 0 1024

# The reproductions from the bug reports, spelled as reported.
run "$dir/litestage-run" --model synthetic:tiny --prompt x --kv-cache-tokens 1000000000000
[ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [[ "$err" == *kv-cache-tokens* ]] && pass ||
  fail "--kv-cache-tokens 1e12: rc $rc: $err"
run "$dir/litestage-run" --model synthetic:tiny --prompt x --threads 2147483647
[ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [[ "$err" == *threads* ]] && pass ||
  fail "--threads 2147483647: rc $rc: $err"
run "$dir/litestage-run" --model synthetic:tiny --pipeline tinythinker --question q \
  --choices "a|b" --early-exit-window 1000000000000 --early-exit-threshold 0.5
[ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && [[ "$err" == *early-exit-window* ]] && pass ||
  fail "--early-exit-window 1e12: rc $rc: $err"

echo "flag_bounds_test: $checks passed, $failures failed"
[ "$failures" -eq 0 ]
