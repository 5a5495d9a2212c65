#!/usr/bin/env bash
# The KV prefix cache on a real litestage-server: the same tinythinker load
# against --prefix-cache=false and --prefix-cache=true in the same run, at
# concurrency 1 and 8 (bench/prefix_cache_bench.py). Writes
# bench/results/<date>-prefix-cache-<model>-cpu.{md,json}.
#
# Environment overrides (defaults in brackets):
#   BENCH_MODEL [the default GGUF]  BENCH_ROUNDS [3]  BENCH_STAGE_TOKENS [0: the pipeline's]
#   BENCH_THREADS [nproc]  BENCH_BIN_DIR [build/bin]  BENCH_RESULTS_DIR [bench/results]
#   BENCH_QUESTIONS [$LITESTAGE_SHARED/data/obqa/test.jsonl]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=bench/server_env.sh
source "$root/bench/server_env.sh" "bench/prefix_cache_bench.sh"
command="bench/prefix_cache_bench.sh"
for var in BENCH_MODEL BENCH_ROUNDS BENCH_STAGE_TOKENS BENCH_THREADS; do
  if [ -n "${!var:-}" ]; then command="$var=${!var} $command"; fi
done
exec python3 "$root/bench/prefix_cache_bench.py" --bin-dir "$bin_dir" --model "$model" \
  --questions "$questions" --results-dir "${BENCH_RESULTS_DIR:-$root/bench/results}" \
  --command "$command" --rounds "${BENCH_ROUNDS:-3}" \
  --stage-tokens "${BENCH_STAGE_TOKENS:-0}" --threads "${BENCH_THREADS:-$(nproc)}"
