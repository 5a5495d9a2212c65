#!/usr/bin/env bash
# The trade-off tables of bench/results/*-eval-*: litestage-eval of the
# default model's shipped (searched) profile against full and every
# baseline (even:K unified skipping, last:K layer early exit, adaskip:K one
# importance budget for every stage, full with early exit alone) on held-out
# questions, in one run, so every speedup is against full measured in the
# same run on the same questions.
#
#   bench/eval_tables.sh obqa|csqa|strategyqa [LIMIT]
#
# Held out: OBQA test, CSQA dev, StrategyQA dev (the search used OBQA
# train). Writes bench/results/<date>-eval-<dataset>-smollm2-135m-cpu.{json,md}.
# Environment: LITESTAGE_SHARED (the shared data, required); EVAL_BATCH (16),
# EVAL_LATENCY_QUESTIONS (16), EVAL_PROFILES (overrides the profile list).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${LITESTAGE_SHARED:?LITESTAGE_SHARED must point at the shared data}"
dataset="${1:?usage: bench/eval_tables.sh obqa|csqa|strategyqa [LIMIT]}"
limit="${2:-200}"
case "$dataset" in
  obqa) held_out="$shared/data/obqa/test.jsonl"
        calibration="$shared/data/obqa/train.jsonl" ;;
  csqa) held_out="$shared/data/csqa/dev_rand_split.jsonl"
        calibration="$shared/data/csqa/train_rand_split.jsonl" ;;
  strategyqa) held_out="$shared/data/strategyqa/dev.json"
              calibration="$shared/data/strategyqa/train.json" ;;
  *) echo "eval_tables.sh: unknown dataset '$dataset'" >&2; exit 2 ;;
esac
model="$("$root/scripts/fetch-default-model.sh")"
searched="$root/profiles/smollm2-135m-tinythinker-obqa.json"
# Baselines at the searched profile's scale: 4 sub-layers per stage (2 whole
# layers for even/last), and early exit alone at the threshold the issue's
# first measurements used.
profiles="${EVAL_PROFILES:-full,$searched,even:2,last:2,adaskip:4,full@ee=4,0.3}"
out="$root/bench/results/$(date -u +%F)-eval-$dataset-smollm2-135m-cpu"
command=(
  "$root/build/bin/litestage-eval" --model "$model" --pipeline tinythinker
  --dataset "$held_out" --limit "$limit" --profiles "$profiles"
  --calibration 8 --calibration-dataset "$calibration"
  --batch "${EVAL_BATCH:-16}" --latency-questions "${EVAL_LATENCY_QUESTIONS:-16}"
  --kv-cache-tokens 65536 --json
)
start="$(date -u +%FT%TZ)"
# The commit the binaries were built from, taken before the long run.
commit="$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+dirty')"
"${command[@]}" > "$out.json"
python3 "$root/bench/eval_report.py" "$out.json" "$out.md" \
  --command "bench/eval_tables.sh $dataset $limit" --started "$start" \
  --commit "$commit"
echo "wrote $out.md"
