#!/usr/bin/env bash
# make demo: a local generation on the embedded default model.
#
# Until the gRPC service lands, the demo runs the engine directly. The
# embedded default is the synthetic `smollm2-135m` preset: SmolLM2-135M's real
# shapes with seeded random weights, so it needs no download and its text is
# gibberish by construction. When the shared stories260K checkpoint is
# available (LITESTAGE_SHARED), the demo also shows a real trained model.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
run="$root/build/bin/litestage-run"

echo "== litestage demo: embedded default model (synthetic:smollm2-135m, random weights) =="
echo "   The text below is meaningless by design; the timings are real."
"$run" --model synthetic:smollm2-135m --prompt "The three stages of reasoning are" \
  --max-new-tokens 32 --temperature 0 --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("model:   ", r["model"])
print("backend: ", r["backend"])
print("prompt:  ", len(r["prompt_token_ids"]), "tokens;", "generated:", len(r["generated_token_ids"]), "tokens")
print("prefill: %.1f tok/s   decode: %.1f tok/s" % (r["prefill_tokens_per_second"], r["decode_tokens_per_second"]))
conf = [c["max_prob"] for c in r["confidences"]]
print("mean max-prob confidence: %.4f" % (sum(conf) / max(1, len(conf))))
'

shared="${LITESTAGE_SHARED:-$root/../shared}"
if [ -f "$shared/models/stories260K/model.safetensors" ]; then
  echo
  echo "== a real trained model: stories260K (TinyStories, 260K parameters, MIT) =="
  "$run" --model "$shared/models/stories260K" --prompt "Once upon a time" \
    --max-new-tokens 60 --temperature 0
fi
