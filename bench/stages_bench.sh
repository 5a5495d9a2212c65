#!/usr/bin/env bash
# LiteStage end to end on the CPU: three-stage tinythinker latency for
# profiles skipping ~0/10/25/40% of sub-layers, each with and without
# confidence early exit, against `full` in the same run (stages_bench).
# Writes bench/results/<date>-stages-<preset>-cpu.{md,json}.
#
# Environment overrides (defaults in brackets):
#   BENCH_MODEL [synthetic:qwen2.5-0.5b]  BENCH_REPS [3]  BENCH_QUESTIONS [1]
#   BENCH_STAGE_TOKENS [24]  BENCH_THREADS [nproc]  BENCH_BIN_DIR [build/bin]
#   BENCH_RESULTS_DIR [bench/results]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
model="${BENCH_MODEL:-synthetic:qwen2.5-0.5b}"
bin_dir="${BENCH_BIN_DIR:-$root/build/bin}"
results_dir="${BENCH_RESULTS_DIR:-$root/bench/results}"
if [ ! -x "$bin_dir/stages_bench" ]; then
  echo "bench/stages_bench.sh: $bin_dir/stages_bench is missing; run 'make build' first" >&2
  exit 1
fi
# Synthetic presets decode bytes: the few-shot prefix would cost ~4x the
# tokens a real tokenizer spends on it, so they run zero-shot.
few_shot=true
case "$model" in synthetic:*) few_shot=false ;; esac
name="$(date +%F)-stages-$(basename "${model#synthetic:}" .gguf)-cpu"
mkdir -p "$results_dir"
{
  echo "# LiteStage stages benchmark ($(date +%F))"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPUs" \
       "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load $(cut -d' ' -f1 /proc/loadavg)"
  echo
  echo '```'
  echo "bench/stages_bench.sh  # BENCH_MODEL=$model BENCH_REPS=${BENCH_REPS:-3} BENCH_QUESTIONS=${BENCH_QUESTIONS:-1} BENCH_STAGE_TOKENS=${BENCH_STAGE_TOKENS:-24}"
  echo '```'
  echo
  "$bin_dir/stages_bench" --model "$model" --few-shot="$few_shot" \
    --reps "${BENCH_REPS:-3}" --num-questions "${BENCH_QUESTIONS:-1}" \
    --calibration-questions 2 --skip-percents 0,10,25,40 \
    --stage-max-new-tokens "${BENCH_STAGE_TOKENS:-24}" \
    --threads "${BENCH_THREADS:-$(nproc)}" \
    --json-out "$results_dir/$name.json"
  echo
  echo "Speedups are against \`full\` in the same run (same questions, interleaved reps)."
  case "$model" in synthetic:*)
    echo "Synthetic weights: the text is random, so answers are usually none and"
    echo "\"answers = full\" only shows that runs are deterministic; stage lengths"
    echo "are set by the token cap and early exit, not by what the model says." ;;
  esac
} > "$results_dir/$name.md"
cat "$results_dir/$name.md"
