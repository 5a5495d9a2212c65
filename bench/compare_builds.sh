#!/usr/bin/env bash
# Two builds of litestage on the same machine in one run: decode and prefill
# tokens/s of one generation and the latency of a three-stage tinythinker
# request, the two builds taking turns (A B, then B A, ...) so drift and
# other load hit both alike; then stages_bench of each. Prints medians and
# B/A ratios, and checks that both builds generate the same text (a refactor
# must change no output). For "before and after" a change:
#
#   git worktree add ../before <base> && (cd ../before && make build)
#   bench/compare_builds.sh ../before/build/bin build/bin
#
# Writes bench/results/<date>-compare-builds-cpu.{md,json}.
# Environment overrides (defaults in brackets):
#   BENCH_MODEL [the default GGUF, scripts/fetch-default-model.sh]
#   BENCH_ROUNDS [7]  BENCH_THREADS [nproc]  BENCH_NEW_TOKENS [64]
#   BENCH_STAGES_REPS [3]  BENCH_RESULTS_DIR [bench/results]
#   BENCH_LABELS ["before,after"]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -ne 2 ]; then
  echo "usage: bench/compare_builds.sh BIN_DIR_A BIN_DIR_B" >&2
  exit 1
fi
bin_a="$(cd "$1" && pwd)"
bin_b="$(cd "$2" && pwd)"
for bin in "$bin_a" "$bin_b"; do
  for tool in litestage-run stages_bench; do
    if [ ! -x "$bin/$tool" ]; then
      echo "bench/compare_builds.sh: $bin/$tool is missing" >&2
      exit 1
    fi
  done
done
model="${BENCH_MODEL:-$("$root/scripts/fetch-default-model.sh")}"
rounds="${BENCH_ROUNDS:-7}"
threads="${BENCH_THREADS:-$(nproc)}"
new_tokens="${BENCH_NEW_TOKENS:-64}"
stages_reps="${BENCH_STAGES_REPS:-3}"
results_dir="${BENCH_RESULTS_DIR:-$root/bench/results}"
labels="${BENCH_LABELS:-before,after}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ~130 tokens of plain prose: prefill is one chunk, decode follows it.
prompt="The history of astronomy spans thousands of years. Early observers \
tracked the motion of the sun, the moon and the planets across the sky, \
and built calendars from their cycles. Later, instruments such as the \
telescope revealed moons around Jupiter, phases of Venus and countless \
faint stars. Today, astronomers study light across the whole spectrum, \
from radio waves to gamma rays, to learn how stars form, how galaxies \
evolve and how the universe began. Explain in simple words why the sky \
is dark at night even though there are so many stars:"
question="Which of these would let the most heat travel through?"
choices="a new pair of jeans|a steel spoon in a cafeteria|a cotton candy at a store|a calvin klein cotton hat"

run_generation() {  # bin out
  "$1/litestage-run" --model "$model" --threads "$threads" --prompt "$prompt" \
    --max-new-tokens "$new_tokens" --ignore-eos --json >"$2" 2>/dev/null
}
run_pipeline() {  # bin out
  "$1/litestage-run" --model "$model" --threads "$threads" --pipeline tinythinker \
    --question "$question" --choices "$choices" --json >"$2" 2>/dev/null
}

echo "== $rounds rounds, builds taking turns ($threads threads, $model) =="
for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then order="a b"; else order="b a"; fi
  for side in $order; do
    bin="$bin_a"; [ "$side" = b ] && bin="$bin_b"
    run_generation "$bin" "$work/gen-$side-$r.json"
    run_pipeline "$bin" "$work/pipe-$side-$r.json"
  done
  echo "round $((r + 1))/$rounds done"
done

echo "== stages_bench, each build =="
for side in a b; do
  bin="$bin_a"; [ "$side" = b ] && bin="$bin_b"
  "$bin/stages_bench" --model "$model" --threads "$threads" --reps "$stages_reps" \
    --num-questions 1 --calibration-questions 2 --skip-percents 0,25 \
    --stage-max-new-tokens 24 --json_out "$work/stages-$side.json" >/dev/null 2>&1
done

name="$(date +%F)-compare-builds-cpu"
mkdir -p "$results_dir"
python3 - "$work" "$rounds" "$labels" "$bin_a" "$bin_b" "$model" "$threads" \
  "$results_dir/$name" <<'EOF'
import json, statistics, subprocess, sys, os, datetime
work, rounds, labels, bin_a, bin_b, model, threads, out = sys.argv[1:]
rounds = int(rounds)
label = dict(zip("ab", labels.split(",")))
def load(kind, side):
    return [json.load(open(f"{work}/{kind}-{side}-{r}.json")) for r in range(rounds)]
rows = []
gen = {s: load("gen", s) for s in "ab"}
pipe = {s: load("pipe", s) for s in "ab"}
def med(values):
    return statistics.median(values)
def figure(name, unit, a, b, higher_is_better):
    ma, mb = med(a), med(b)
    ratio = mb / ma if ma else float("nan")
    rows.append((name, unit, ma, mb, ratio, min(a), max(a), min(b), max(b),
                 higher_is_better))
figure("prefill", "tok/s", [g["prefill_tokens_per_second"] for g in gen["a"]],
       [g["prefill_tokens_per_second"] for g in gen["b"]], True)
figure("decode", "tok/s", [g["decode_tokens_per_second"] for g in gen["a"]],
       [g["decode_tokens_per_second"] for g in gen["b"]], True)
figure("tinythinker request", "s", [p["seconds"] for p in pipe["a"]],
       [p["seconds"] for p in pipe["b"]], False)
texts_equal = all(g["text"] == gen["a"][0]["text"] for s in "ab" for g in gen[s])
stages_equal = all([st["output"] for st in p["stages"]] ==
                   [st["output"] for st in pipe["a"][0]["stages"]]
                   for s in "ab" for p in pipe[s])
stages = {s: json.load(open(f"{work}/stages-{s}.json")) for s in "ab"}
def stage_rows(doc):  # stages_bench --json_out: {"configs": [{name, median_seconds}]}
    return {c["name"]: c["median_seconds"] for c in doc["configs"]}
sa, sb = stage_rows(stages["a"]), stage_rows(stages["b"])
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
            if l.startswith("model name")), "unknown")
lines = [f"# Build comparison: {label['a']} vs {label['b']} ({datetime.date.today()})", "",
         f"commit {commit}, {os.cpu_count()} CPUs ({cpu}), {threads} threads, "
         f"load {open('/proc/loadavg').read().split()[0]}", "",
         f"- A ({label['a']}): `{bin_a}`", f"- B ({label['b']}): `{bin_b}`",
         f"- model: `{model}`", "",
         "```", f"bench/compare_builds.sh {bin_a} {bin_b}  # BENCH_ROUNDS={rounds}", "```", "",
         f"{rounds} rounds, the builds taking turns (A B, B A, ...). Medians; "
         "min..max in brackets. Ratio B/A: above 1 is faster for tok/s, below 1 "
         "is faster for seconds.", "",
         f"| figure | unit | {label['a']} | {label['b']} | B/A |", "|---|---|---|---|---|"]
for name, unit, ma, mb, ratio, a0, a1, b0, b1, _ in rows:
    lines.append(f"| {name} | {unit} | {ma:.3f} [{a0:.3f}..{a1:.3f}] | "
                 f"{mb:.3f} [{b0:.3f}..{b1:.3f}] | {ratio:.3f} |")
lines += ["", f"Same generated text in every run of both builds: "
          f"{'yes' if texts_equal else 'NO'}; same tinythinker stage outputs: "
          f"{'yes' if stages_equal else 'NO'}.", ""]
if sa:
    lines += ["stages_bench (median seconds per request, each build's own "
              "medians over its reps):", "",
              f"| config | {label['a']} | {label['b']} | B/A |", "|---|---|---|---|"]
    for key in [k for k in sa if k in sb]:
        lines.append(f"| {key} | {sa[key]:.3f} | {sb[key]:.3f} | {sb[key] / sa[key]:.3f} |")
    lines.append("")
open(out + ".md", "w").write("\n".join(lines))
json.dump({"rows": [dict(zip(["figure", "unit", "median_a", "median_b", "ratio",
                              "min_a", "max_a", "min_b", "max_b",
                              "higher_is_better"], r)) for r in rows],
           "texts_equal": texts_equal, "stage_outputs_equal": stages_equal,
           "generation": {s: [{k: g[k] for k in (
               "prefill_tokens_per_second", "decode_tokens_per_second",
               "prompt_tokens", "generated_tokens", "prefill_seconds",
               "decode_seconds", "text", "finish_reason", "model", "backend")
               if k in g} for g in gen[s]] for s in "ab"}, "pipeline_seconds": {s: [p["seconds"] for p in pipe[s]] for s in "ab"},
           "stages_bench": stages}, open(out + ".json", "w"), indent=1)
print("\n".join(lines))
if not (texts_equal and stages_equal):
    sys.exit("the builds generated different text")
EOF
