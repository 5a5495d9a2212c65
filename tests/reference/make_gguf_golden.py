#!/usr/bin/env python3
"""Records what Hugging Face transformers computes for the default GGUF model.

Purpose
  litestage's embedded default model is SmolLM2-135M-Instruct as a Q4_1 GGUF
  (scripts/fetch-default-model.sh). This script loads that same file with
  transformers (tokenizer and weights built from the GGUF alone: the weights
  dequantized to float32, the forward pass in float32) and writes
  tests/golden/gguf/smollm2_135m_instruct_q4_1.json with:
    * "gguf_sha256" / "gguf_size": which file the references belong to;
    * "prompts": for plain prompts (encoded with add_special_tokens=True) and
      chat prompts (apply_chat_template(add_generation_prompt=True), which
      writes SmolLM2's default system prompt), the prompt ids, the
      last-position logits as the top-64 (ids, values) plus full-vocabulary
      statistics (mean, std, min, max, logsumexp) and every 16th logit
      (ids 0, 16, 32, ...), and the greedy continuation of up to 32 tokens
      exactly as model.generate(do_sample=False) returns it (EOS <|im_end|>
      included when generation stopped on it), with its decoded text and the
      smallest top-1/top-2 logit margin along the greedy path (a check that a
      1e-3 logit error cannot flip a token);
    * "tokenizer": CORPUS_TEST of make_tokenizer_golden.py (plus digit-heavy
      strings) encoded with the GGUF-built tokenizer, with and without special
      tokens, and decoded (skip_special_tokens true and false).
  Logit values are rounded to 6 significant digits; the JSON stays < 500 KB.

  About the pre-tokenizer: the file says tokenizer.ggml.pre = "smollm", which
  llama.cpp splits as \\p{N} (single digits) then the GPT-2 regex, i.e. the
  original tokenizer.json's Sequence[Digits(individual_digits=True),
  ByteLevel]. transformers has no "smollm" entry and keeps GPT-2's ByteLevel
  regex. Both give the same ids on ASCII digits (the vocabulary has no
  multi-digit or space+digit tokens) but not on other \p{N} characters
  (" ٣٤ ½"): the corpus records both, "ids" (transformers) and
  "ids_smollm_split" (the original split, which litestage follows), and
  "smollm_digits_split_agrees" says whether they agree everywhere.

How to run (from the repository root):
    .venv-golden/bin/pip install gguf==0.19.0 accelerate==1.15.0  # on top of
    # make_golden.py's pins:
    # torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 numpy==2.4.6
    .venv-golden/bin/python tests/reference/make_gguf_golden.py [GGUF]
  GGUF defaults to $LITESTAGE_DEFAULT_GGUF, else scripts/fetch-default-model.sh.
  Runs on CPU in about a minute.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "golden" / "gguf" / "smollm2_135m_instruct_q4_1.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))

PLAIN_PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little robot who",
    "def fibonacci(n):\n",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
]
EXTRA_TEXTS = [
    "1234567 12 3 x1y22z333 3.14159 2024-05-06",
    "Price: $1,299.99 (was 1500) - call 555-0123",
    "bytes the vocabulary lacks: a\x04b\x06c\x1d\x14d",
]
MAX_NEW_TOKENS = 32
TOP_K = 64
STRIDE = 16


def sig(x, digits=6):
    return float(f"{float(x):.{digits}g}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_path():
    if len(sys.argv) > 1:
        return Path(sys.argv[1]).resolve()
    if os.environ.get("LITESTAGE_DEFAULT_GGUF"):
        return Path(os.environ["LITESTAGE_DEFAULT_GGUF"]).resolve()
    out = subprocess.run([str(REPO / "scripts" / "fetch-default-model.sh")],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def logit_record(logits):
    import torch
    values, ids = torch.topk(logits, TOP_K)
    return {
        "top_ids": ids.tolist(),
        "top_values": [sig(v) for v in values.tolist()],
        "mean": sig(logits.mean()),
        "std": sig(logits.std()),
        "min": sig(logits.min()),
        "max": sig(logits.max()),
        "logsumexp": sig(torch.logsumexp(logits, 0)),
        "stride": STRIDE,
        "strided": [sig(v) for v in logits[::STRIDE].tolist()],
    }


def main():
    import numpy
    import tokenizers
    import torch
    import transformers
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from make_tokenizer_golden import CORPUS_TEST
    except ImportError:
        CORPUS_TEST = ["Hello world", " Hello world", "Numbers 1 12 123"]

    from importlib.metadata import version
    GGUF_VERSION = version("gguf")
    path = gguf_path()
    print("torch", torch.__version__, "transformers", transformers.__version__,
          "tokenizers", tokenizers.__version__, "gguf", GGUF_VERSION,
          "numpy", numpy.__version__, file=sys.stderr)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    eos = model.generation_config.eos_token_id
    print("eos", eos, "bos", tok.bos_token, "pad", tok.pad_token,
          file=sys.stderr)

    # Tokenizer corpus, and the llama.cpp "smollm" split for comparison.
    digits = tokenizers.Tokenizer.from_str(tok.backend_tokenizer.to_str())
    digits.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    corpus = []
    agrees = True
    for text in list(CORPUS_TEST) + EXTRA_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        ids_special = tok.encode(text, add_special_tokens=True)
        other = digits.encode(text, add_special_tokens=False).ids
        if other != ids:
            agrees = False
            print("smollm split differs:", repr(text), ids, other,
                  file=sys.stderr)
        corpus.append({
            "text": text,
            "ids": ids,
            "ids_with_special": ids_special,
            # The same vocabulary and merges behind SmolLM's own
            # pre-tokenizer (Digits + ByteLevel = llama.cpp's "smollm"):
            # what litestage is tested against.
            "ids_smollm_split": other,
            "decoded": tok.decode(ids_special, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids_special,
                                               skip_special_tokens=True),
        })

    prompts = []
    cases = [("plain", p) for p in PLAIN_PROMPTS] + \
            [("chat", p) for p in CHAT_PROMPTS]
    for kind, text in cases:
        if kind == "plain":
            ids = tok.encode(text, add_special_tokens=True)
            rendered = text
        else:
            messages = [{"role": "user", "content": text}]
            rendered = tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
            ids = tok.encode(rendered, add_special_tokens=False)
            via_template = tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True,
                return_dict=False)
            if hasattr(via_template, "input_ids"):
                via_template = via_template["input_ids"]
            assert list(via_template) == ids, (via_template, ids)
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1].float()
            out = model.generate(input_ids, max_new_tokens=MAX_NEW_TOKENS,
                                 do_sample=False, output_scores=True,
                                 return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id)
        generated = out.sequences[0, len(ids):].tolist()
        margin = math.inf
        for step_scores in out.scores:
            top2 = torch.topk(step_scores[0].float(), 2).values
            margin = min(margin, float(top2[0] - top2[1]))
        prompts.append({
            "kind": kind,
            "text": text,
            "rendered": rendered,
            "ids": ids,
            "last_logits": logit_record(logits),
            "greedy_ids": generated,
            "greedy_text": tok.decode(generated, skip_special_tokens=True),
            "greedy_min_margin": sig(margin),
            "max_new_tokens": MAX_NEW_TOKENS,
        })
        print(kind, repr(text), "->",
              repr(prompts[-1]["greedy_text"]), "margin", margin,
              file=sys.stderr)

    data = {
        "generator": "tests/reference/make_gguf_golden.py",
        "versions": {"torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__,
                     "gguf": GGUF_VERSION},
        "gguf_file": path.name,
        "gguf_sha256": sha256(path),
        "gguf_size": path.stat().st_size,
        "vocab_size": int(model.config.vocab_size),
        "eos_token_id": eos,
        "bos_token_id": tok.bos_token_id,
        "chat_template": tok.chat_template,
        "smollm_digits_split_agrees": agrees,
        "prompts": prompts,
        "tokenizer": corpus,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
