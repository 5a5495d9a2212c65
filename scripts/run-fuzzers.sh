#!/usr/bin/env bash
# Runs every libFuzzer target in DIR for SECONDS each, from an empty corpus
# plus the seeds under tests/fuzz/corpus/<target>/ when present. Any crash,
# leak or sanitizer report fails the run.
set -euo pipefail
dir="$(cd "${1:?usage: run-fuzzers.sh BIN_DIR SECONDS}" && pwd)"
seconds="${2:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
status=0
for target in fuzz_safetensors_header fuzz_gguf fuzz_tokenizer fuzz_profile fuzz_pipeline; do
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
