#!/usr/bin/env bash
# Runs each libFuzzer TARGET in DIR for SECONDS, from an empty corpus plus
# the seeds under tests/fuzz/corpus/<target>/ when present. Any crash, leak
# or sanitizer report fails the run. The Makefile's FUZZ_TARGETS names them.
set -euo pipefail
usage="usage: run-fuzzers.sh BIN_DIR SECONDS TARGET..."
dir="$(cd "${1:?$usage}" && pwd)"
seconds="${2:?$usage}"
[ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
status=0
for target in "${@:3}"; do
  binary="$dir/$target"
  if [ ! -x "$binary" ]; then
    echo "run-fuzzers: $binary missing" >&2
    exit 1
  fi
  work="$(mktemp -d)"
  seeds=()
  [ -d "$root/tests/fuzz/corpus/$target" ] && seeds=("$root/tests/fuzz/corpus/$target")
  echo "run-fuzzers: $target for ${seconds}s" >&2
  if ! (cd "$work" && "$binary" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -print_final_stats=1 "$work" "${seeds[@]}" > "$work/log" 2>&1); then
    tail -n 60 "$work/log" >&2
    echo "run-fuzzers: $target FAILED" >&2
    status=1
  else
    grep -E "stat::number_of_executed_units|Done" "$work/log" | tail -n 2 >&2 || true
  fi
  rm -rf "$work"
done
exit $status
