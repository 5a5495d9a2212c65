#!/usr/bin/env bash
# litestage-cli bench against a real litestage-server on the CPU, on the
# embedded default model (SmolLM2-135M-Instruct GGUF): `full` against a
# skipping profile at concurrency 1, 8 and 32, then mixed against grouped
# skip-set batching (bench/server_bench.py). Writes
# bench/results/<date>-server-<model>-cpu.{md,json}.
#
# Environment overrides (defaults in brackets):
#   BENCH_MODEL [the default GGUF]  BENCH_PROFILE [even:8]
#   BENCH_CONCURRENCY [1,8,32]      BENCH_STAGE_TOKENS [16]  BENCH_REPS [1]
#   BENCH_THREADS [nproc]           BENCH_BIN_DIR [build/bin]
#   BENCH_RESULTS_DIR [bench/results]
#   BENCH_QUESTIONS [$LITESTAGE_SHARED/data/obqa/test.jsonl]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=bench/server_env.sh
source "$root/bench/server_env.sh" "bench/server_bench.sh"
command="bench/server_bench.sh"
for var in BENCH_MODEL BENCH_PROFILE BENCH_CONCURRENCY BENCH_STAGE_TOKENS BENCH_REPS BENCH_THREADS; do
  if [ -n "${!var:-}" ]; then command="$var=${!var} $command"; fi
done
exec python3 "$root/bench/server_bench.py" --bin-dir "$bin_dir" --model "$model" \
  --questions "$questions" --results-dir "${BENCH_RESULTS_DIR:-$root/bench/results}" \
  --command "$command" --profile "${BENCH_PROFILE:-even:8}" \
  --concurrency "${BENCH_CONCURRENCY:-1,8,32}" --stage-tokens "${BENCH_STAGE_TOKENS:-16}" \
  --reps "${BENCH_REPS:-1}" --threads "${BENCH_THREADS:-$(nproc)}"
