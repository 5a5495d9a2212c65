#!/usr/bin/env bash
# End-to-end checks of build/bin/litestage-run as a user calls it.
# Usage: cli_test.sh BIN_DIR   (LITESTAGE_SHARED: shared models; required
# when set, the real-model checks are skipped only when it is unset.
# LITESTAGE_DEFAULT_GGUF: the default GGUF model from
# scripts/fetch-default-model.sh; the same rule.)
set -uo pipefail
bin="${1:?usage: cli_test.sh BIN_DIR}/litestage-run"
failures=0
pass() { echo "PASS: $1"; }
fail() { echo "FAIL: $1"; failures=$((failures + 1)); }

# 1. The acceptance command: stories260K greedy continuation equals llama2.c's.
if [ -n "${LITESTAGE_SHARED:-}" ]; then
  model="$LITESTAGE_SHARED/models/stories260K"
  reference="$model/llama2c/reference_runc_greedy_prompt_once_upon_a_time_n64.txt"
  if [ ! -f "$model/model.safetensors" ] || [ ! -f "$reference" ]; then
    fail "LITESTAGE_SHARED=$LITESTAGE_SHARED is set but stories260K is missing"
  else
    out="$("$bin" --model "$model" --prompt "Once upon a time" --max-new-tokens 40 \
            --temperature 0 2>/dev/null)"
    expected="$(cat "$reference")"
    # run.c prints the prompt then the continuation; we print the continuation.
    if [ -n "$out" ] && [[ "$expected" == "Once upon a time$out"* ]]; then
      pass "stories260K continuation is a prefix of llama2.c's ($(printf %s "$out" | wc -c) bytes)"
    else
      fail "stories260K continuation differs from llama2.c: got [$out]"
    fi
    json="$("$bin" --model "$model" --prompt "Once upon a time" --max-new-tokens 8 \
             --temperature 0 --json 2>/dev/null)"
    if python3 - "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
assert r["prompt_token_ids"][0] == 1, r["prompt_token_ids"]
assert len(r["generated_token_ids"]) == 8
assert len(r["confidences"]) == 8
assert r["synthetic"] is False
assert r["decode_tokens_per_second"] > 0
assert r["finish_reason"] == "length"
PY
    then pass "--json object has ids, confidences and timings"; else fail "--json: [$json]"; fi
  fi
else
  echo "SKIP: LITESTAGE_SHARED unset, real-model checks skipped"
fi

# 1b. The default model's acceptance command: a chat question answered.
if [ -n "${LITESTAGE_DEFAULT_GGUF:-}" ]; then
  if [ ! -f "$LITESTAGE_DEFAULT_GGUF" ]; then
    fail "LITESTAGE_DEFAULT_GGUF=$LITESTAGE_DEFAULT_GGUF is set but missing"
  else
    out="$("$bin" --model "$LITESTAGE_DEFAULT_GGUF" --chat --prompt "What is the capital of France?" \
            --max-new-tokens 16 --temperature 0 2>/dev/null)"
    if [[ "$out" == *Paris* ]]; then
      pass "default GGUF model answers the France question with Paris: [$out]"
    else
      fail "default GGUF model's answer lacks Paris: [$out]"
    fi
  fi
else
  echo "SKIP: LITESTAGE_DEFAULT_GGUF unset, default-model check skipped"
fi

# 1c. LiteStage multi-stage reasoning (the issue's acceptance flags) on the
# default model: tinythinker with full, even:K and an early-exit override.
if [ -n "${LITESTAGE_DEFAULT_GGUF:-}" ] && [ -f "$LITESTAGE_DEFAULT_GGUF" ]; then
  question="A person wants to start saving money so that they can afford a nice vacation at the end of the year. After looking over their budget and expenses, they decide the best way to save money is to"
  choices="make more phone calls|quit eating lunch out|buy less with monopoly money|have lunch with friends"
  for variant in "full" "even:6" "even:6 --early-exit-window 4 --early-exit-threshold 0.6"; do
    # shellcheck disable=SC2086
    json="$("$bin" --model "$LITESTAGE_DEFAULT_GGUF" --pipeline tinythinker --question "$question" \
             --choices "$choices" --profile $variant --stage-max-new-tokens 24 --json 2>/dev/null)"
    if python3 - "$json" "$variant" <<'PY'
import json, sys
r, variant = json.loads(sys.argv[1]), sys.argv[2]
layers = r["num_layers"]
assert [s["name"] for s in r["stages"]] == ["recall", "analysis", "summary"], r["stages"]
assert [b["option"] for b in r["stages"][1]["branches"]] == ["A", "B", "C", "D"]
skipped = 0 if variant == "full" else 6
for s in r["stages"]:
    sub = s["sublayers"]
    total = sum(sub.values())
    assert total == 2 * layers * s["forwarded_tokens"], (s["name"], sub)
    assert sub["attention_skipped"] == skipped * s["forwarded_tokens"], sub
    assert s["skipped_mlp_layers"] == skipped
    assert 0 < s["generated_tokens"] <= 24 * len(s["branches"])
    assert s["prefill_seconds"] > 0 and s["seconds"] >= s["prefill_seconds"]
    if "early-exit" in variant:
        assert s["early_exit"] == {"enabled": True, "window": 4, "threshold": 0.6000000238418579,
                                   "confidence": "max_prob", "min_tokens": 0}, s["early_exit"]
    else:
        assert not s["early_exit_fired"] and s["early_exit"]["enabled"] is False
assert r["answer"] in ("", "A", "B", "C", "D")
if r["answer"]:
    assert r["answer_text"] == r["choices"]["ABCD".index(r["answer"])]
if "early-exit" in variant:
    assert any(s["early_exit_fired"] for s in r["stages"]), "threshold 0.6 never fired"
PY
    then pass "tinythinker --profile $variant: records consistent, answer [$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["answer"])' "$json")]"
    else fail "tinythinker --profile $variant: [$json]"; fi
  done
  out="$("$bin" --model "$LITESTAGE_DEFAULT_GGUF" --pipeline tinythinker --question "Is the sun a star?" \
          --profile last:2 --stage-max-new-tokens 16 2>/dev/null)"
  if [[ "$out" == *"[recall]"*"[analysis]"*"[summary]"*"answer:"* ]]; then
    pass "readable pipeline output lists every stage and the answer"
  else
    fail "readable pipeline output: [$out]"
  fi
fi

# 2. Synthetic models work anywhere and say so.
err="$("$bin" --model synthetic:tiny --prompt "hi" --max-new-tokens 4 2>&1 >/dev/null)"
if [[ "$err" == *SYNTHETIC* ]]; then pass "synthetic model is labelled"; else fail "no SYNTHETIC label: $err"; fi

# 3. Bad input: non-zero exit and a message naming the problem.
expect_error() {  # description, expected substring, args...
  local what="$1" needle="$2"; shift 2
  local err code
  err="$("$bin" "$@" 2>&1 >/dev/null)"; code=$?
  if [ $code -ne 0 ] && [[ "$err" == *"$needle"* ]]; then pass "$what"; else fail "$what (exit $code): $err"; fi
}
expect_error "missing model directory" "/nonexistent/model" --model /nonexistent/model --prompt x
expect_error "missing --model" "--model" --prompt x
expect_error "bad top-p" "--top-p" --model synthetic:tiny --prompt x --top-p 1.5
# Out of the sampler's range though inside the flag's: the sampler names it.
expect_error "zero top-p" "top_p" --model synthetic:tiny --prompt x --top-p 0
expect_error "bad dtype" "--dtype" --model synthetic:tiny --prompt x --dtype f8
expect_error "unknown preset" "nope" --model synthetic:nope --prompt x
expect_error "unknown pipeline" "nosuch" --model synthetic:tiny --pipeline nosuch --question q
expect_error "bad profile spec" "even:9" --model synthetic:tiny --pipeline tinythinker \
  --question "q?" --choices "a|b" --profile even:9
expect_error "missing profile file" "/nonexistent/p.json" --model synthetic:tiny \
  --pipeline tinythinker --question "q?" --choices "a|b" --profile /nonexistent/p.json
expect_error "empty question" "question" --model synthetic:tiny --pipeline tinythinker \
  --question "  " --choices "a|b"
expect_error "too many choices" "choices" --model synthetic:tiny --pipeline tinythinker \
  --question "q?" --choices "a|b|c|d|e|f"
expect_error "bad early-exit threshold" "early-exit-threshold" --model synthetic:tiny \
  --pipeline tinythinker --question "q?" --choices "a|b" --early-exit-window 4 \
  --early-exit-threshold 2

echo "cli_test: $failures check(s) failed"
[ $failures -eq 0 ]
