#!/usr/bin/env python3
"""Generates the golden reference files the C++ golden tests compare against.

Purpose
  litestage's forward pass must agree with independent references. This script
  is the only place that needs torch: it builds TINY random models of every
  supported architecture/variant with Hugging Face transformers, saves them
  (save_pretrained: config.json, safetensors, generation_config.json) under
  tests/golden/models/<name>/, and records what transformers computes for them
  into tests/golden/models/<name>/golden.json:
    * fixed prompts as token ids (BOS first for the Llama/Mistral families),
      lengths 1, 7 and 40;
    * the FULL float32 logits at every position of the short prompts
      (model(input_ids).logits, 6 significant digits), the last-position
      logits of the long prompt;
    * greedy continuations of fixed length (EOS ignored) from model.generate,
      cross-checked against a cache-free argmax loop, with the smallest
      top-1/top-2 logit margin seen (so near-ties cannot make the test flaky);
    * for the bf16-stored model: the reference is HF in float32 on the bf16
      weights (exact up to fp32 rounding); logits computed in bf16 are kept
      under "logits_bf16_compute" for information only;
    * sub-layer skip references (llama_f32_tied_gqa, qwen2_f32): logits with
      the attention of layer 1 replaced by a zero output ("skip_attention_1",
      residual unchanged) and with the MLP of layer 0 zeroed ("skip_mlp_0").
  It also checks the real stories260K model (LITESTAGE_SHARED/models/
  stories260K) with transformers against llama2.c's run.c outputs:
    * tests/golden/stories260K_transformers_check.json: does HF greedy from
      BOS for 256 tokens equal llama2c/reference_greedy_n256_token_ids.json,
      and does the prompted greedy text equal run.c's "-n 64 -i 'Once upon a
      time'" output;
    * tests/golden/stories260K_logits.json: logits at every position of
      [BOS] + encode("Once upon a time").
  The committed outputs let CI run the golden tests without torch.

  Details that keep the references meaningful:
    * weights use initializer_range 0.2 (and perturbed norm weights, random
      q/k/v biases) so logits spread over several units and greedy tokens vary;
    * a model/prompt set whose greedy path has a top-1/top-2 margin below
      MIN_GREEDY_MARGIN is redrawn (next seed), since rounding alone could flip
      such a token; the recorded margins are >= 2e-3, far above the 1e-4 logit
      tolerance of the tests;
    * transformers 5 saves "rope_parameters"/"dtype"; config.json is rewritten
      to the legacy "rope_theta"/"rope_scaling"/"torch_dtype" keys that
      downloaded checkpoints carry, and the reference is computed after
      reloading it;
    * llama3_rope_scaling records how much its logits differ without the
      scaling ("max_abs_diff_without_rope_scaling"); the skip references record
      their distance from the unskipped logits.
  The output is byte-for-byte reproducible for the pinned versions.

How to run (from the repository root):
    python3 -m venv .venv-golden
    .venv-golden/bin/pip install torch==2.15.0 transformers==5.24.0 \
        safetensors==0.8.0 numpy==2.4.6 sentencepiece==0.2.3 \
        tokenizers==0.23.3 jinja2==3.1.6 protobuf==7.36.2
    .venv-golden/bin/python tests/reference/make_golden.py
  Environment: LITESTAGE_SHARED (default ../shared) locates models/stories260K.
  The stories260K part is skipped (with a message) when that folder is absent.
  If tests/reference/make_tokenizer_golden.py exists and its outputs
  (tests/golden/tokenizers/{bytelevel,metaspace}) are missing, its main() is
  called first; those tokenizers are then copied into the model folders
  (bytelevel for qwen*, metaspace for llama*/mistral) and the vocabularies
  sized to match. Without them the models get no tokenizer and a 384 vocab.

Pinned versions (the ones the committed files were made with):
  torch 2.15.0 (PyPI default wheel; runs on CPU), transformers 5.24.0,
  safetensors 0.8.0, numpy 2.4.6, sentencepiece 0.2.3, tokenizers 0.23.3,
  jinja2 3.1.6, protobuf 7.36.2. Runs in well under a minute on 2 cores.
"""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import transformers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
MODELS_OUT = GOLDEN / "models"
TOKENIZERS = GOLDEN / "tokenizers"
SHARED = Path(os.environ.get("LITESTAGE_SHARED", str(REPO.parent / "shared")))

SEED = 20240607
NEW_TOKENS = 24          # Greedy continuation length (EOS ignored).
PROMPT_LENGTHS = (1, 7, 40)
FULL_LOGITS_MAX_LEN = 7  # Full logits recorded for prompts up to this length.
MIN_GREEDY_MARGIN = 2e-3  # Reject prompts whose greedy path nearly ties.
DEFAULT_VOCAB = 384
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "tokenizer.model")

torch.set_grad_enabled(False)


def sig6(x):
    """Rounds to 6 significant digits (relative error <= 5e-7)."""
    return float(f"{x:.6g}")


def rows(tensor):
    """[n, vocab] tensor -> list of lists of 6-significant-digit floats."""
    return [[sig6(v) for v in row] for row in tensor.float().tolist()]


# ----------------------------------------------------------------------------
# Tokenizers (made by tok's make_tokenizer_golden.py).
# ----------------------------------------------------------------------------

def ensure_tokenizers():
    wanted = [TOKENIZERS / "bytelevel", TOKENIZERS / "metaspace"]
    if all(d.is_dir() for d in wanted):
        return
    script = REPO / "tests" / "reference" / "make_tokenizer_golden.py"
    if not script.exists():
        print("no tokenizer golden script; models get no tokenizer")
        return
    spec = importlib.util.spec_from_file_location("make_tokenizer_golden", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "main"):
        print("running make_tokenizer_golden.main()")
        module.main()


def token_content(value):
    if isinstance(value, dict):
        return value.get("content")
    return value


def tokenizer_info(tok_dir):
    """Vocabulary size, special ids and bos/eos of a tokenizer.json folder."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    vocab_size = max(vocab.values()) + 1
    special = set()
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    for added in data.get("added_tokens", []):
        # Prompts stay on ordinary vocabulary: no special or added tokens.
        special.add(added["id"])
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = tok_dir / name
        if path.exists():
            config.update(json.loads(path.read_text()))
    bos = token_content(config.get("bos_token"))
    eos = token_content(config.get("eos_token"))
    # Byte-fallback tokens <0xNN> are regular but unusual; keep them in.
    return {
        "vocab_size": vocab_size,
        "special": special,
        "bos": vocab.get(bos) if bos else None,
        "eos": vocab.get(eos) if eos else None,
    }


# ----------------------------------------------------------------------------
# Model variants.
# ----------------------------------------------------------------------------

def common(hidden=32, heads=4, kv_heads=2, inter=64, layers=2):
    return dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        # Large init so logits spread (several units) and greedy tokens vary.
        initializer_range=0.2,
        attn_implementation="eager",
    )


VARIANTS = [
    # name, config class, model class, tokenizer kind, config kwargs, extras
    ("llama_f32_tied_gqa", LlamaConfig, LlamaForCausalLM, "metaspace",
     dict(common(hidden=48, heads=4, kv_heads=2, inter=96),
          tie_word_embeddings=True), {"skips": True}),
    ("llama_bf16_untied", LlamaConfig, LlamaForCausalLM, "metaspace",
     dict(common(), tie_word_embeddings=False), {"dtype": torch.bfloat16}),
    ("llama3_rope_scaling", LlamaConfig, LlamaForCausalLM, "metaspace",
     # head_dim 16: wavelengths 2*pi*10000^(i/16) = 6.3 .. 1.9e4. With
     # original_max_position_embeddings 16 the band [4, 16] is smoothed and
     # everything longer divided by 8, so the scaling changes frequencies.
     # 2 heads sharing 1 KV head (multi-query).
     dict(common(hidden=32, heads=2, kv_heads=1, inter=64),
          tie_word_embeddings=True,
          rope_theta=10000.0,
          rope_scaling={"rope_type": "llama3", "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 16}), {}),
    ("qwen2_f32", Qwen2Config, Qwen2ForCausalLM, "bytelevel",
     dict(common(), tie_word_embeddings=True, use_sliding_window=False,
          rms_norm_eps=1e-6), {"skips": True}),
    ("qwen3_f32", Qwen3Config, Qwen3ForCausalLM, "bytelevel",
     # head_dim 16 != hidden 32 / heads 4 = 8: q_dim 64 > hidden.
     dict(common(), head_dim=16, tie_word_embeddings=True,
          use_sliding_window=False, rms_norm_eps=1e-6), {}),
    ("mistral_f32", MistralConfig, MistralForCausalLM, "metaspace",
     # Window far longer than any recorded sequence (<= 64 positions).
     dict(common(), tie_word_embeddings=True, sliding_window=4096), {}),
    ("mistral_sliding_window", MistralConfig, MistralForCausalLM, "metaspace",
     # A window of 8 positions: the 40-token prompt and every greedy step
     # past position 8 attend to a strict suffix of the sequence.
     dict(common(), tie_word_embeddings=True, sliding_window=8), {}),
    ("llama_sharded", LlamaConfig, LlamaForCausalLM, "metaspace",
     dict(common(), tie_word_embeddings=False), {"shard": "40KB"}),
]


def scale_biases(model):
    """Qwen2's q/k/v biases are initialised to zero; make them matter."""
    for name, param in model.named_parameters():
        if name.endswith("_proj.bias"):
            param.normal_(0.0, 0.5)
        if name.endswith("norm.weight"):
            # RMSNorm weights start at 1; perturb so a wrong norm shows.
            param.copy_(1.0 + 0.3 * torch.randn_like(param))


def make_prompts(gen, vocab_size, special, bos):
    """Deterministic random prompts over the regular (non-special) ids."""
    regular = [i for i in range(vocab_size) if i not in special and i != bos]
    prompts = []
    for length in PROMPT_LENGTHS:
        body_len = length - (1 if bos is not None else 0)
        picks = torch.randint(0, len(regular), (max(body_len, 0),),
                              generator=gen).tolist()
        ids = ([bos] if bos is not None else []) + [regular[p] for p in picks]
        if not ids:  # length-1 prompt without BOS.
            ids = [regular[torch.randint(0, len(regular), (1,),
                                         generator=gen).item()]]
        prompts.append(ids)
    return prompts


def greedy_manual(model, ids, n):
    """Cache-free greedy: argmax over full-recompute logits; returns margins."""
    seq = list(ids)
    margins = []
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1].float()
        top2 = torch.topk(logits, 2).values
        margins.append((top2[0] - top2[1]).item())
        seq.append(int(torch.argmax(logits).item()))
    return seq[len(ids):], min(margins)


def greedy_generate(model, ids, n):
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        eos_token_id=None,
        pad_token_id=0,
        temperature=None, top_p=None, top_k=None,
    )
    return out[0, len(ids):].tolist()


def skip_logits(model, ids, attention_layer=None, mlp_layer=None):
    """Logits with one sub-layer's output replaced by zeros (residual kept)."""
    layers = model.model.layers
    restore = []
    if attention_layer is not None:
        attn = layers[attention_layer].self_attn
        original = attn.forward

        def zero_attn(*args, _orig=original, **kwargs):
            result = _orig(*args, **kwargs)
            if isinstance(result, tuple):
                return (torch.zeros_like(result[0]),) + tuple(result[1:])
            return torch.zeros_like(result)

        attn.forward = zero_attn
        restore.append((attn, original))
    if mlp_layer is not None:
        mlp = layers[mlp_layer].mlp
        original = mlp.forward
        mlp.forward = lambda x, *a, **k: torch.zeros_like(x)
        restore.append((mlp, original))
    try:
        return model(torch.tensor([ids])).logits[0]
    finally:
        for module, original in restore:
            module.forward = original


def write_legacy_config(path):
    """transformers 5 writes "rope_parameters" (rope_theta inside) and "dtype";
    the checkpoints people download (Llama 3.x, Qwen2.5/3, Mistral) carry the
    long-standing top-level "rope_theta", "rope_scaling" and "torch_dtype".
    Rewrite to that layout; the reference is computed after reloading it, so
    transformers' own reading of the legacy keys is what is recorded."""
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        config["rope_theta"] = rope.pop("rope_theta", 10000.0)
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = rope
        else:
            config["rope_scaling"] = None
    if "dtype" in config:
        config["torch_dtype"] = config["dtype"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_model_and_record(out_dir, seed, config, model_cls, stored_dtype,
                          extras, info, bos, eos, tok_dir):
    """Draws a model with `seed`, saves it to `out_dir` and records the prompt
    entries; None when every prompt set has a greedy near-tie."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    scale_biases(model)
    if config.tie_word_embeddings:
        model.tie_weights()

    save_kwargs = {}
    if "shard" in extras:
        save_kwargs["max_shard_size"] = extras["shard"]
    to_save = model if stored_dtype == torch.float32 else model.to(stored_dtype)
    to_save.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eos, do_sample=False)
    to_save.save_pretrained(out_dir, **save_kwargs)
    write_legacy_config(out_dir / "config.json")
    if tok_dir is not None:
        for file_name in TOKENIZER_FILES:
            if (tok_dir / file_name).is_file():
                shutil.copy(tok_dir / file_name, out_dir / file_name)

    # Reference: reload what was written, computing in float32.
    ref = model_cls.from_pretrained(out_dir, dtype=torch.float32,
                                    attn_implementation="eager").eval()
    bf = None
    if stored_dtype != torch.float32:
        bf = model_cls.from_pretrained(out_dir, dtype=torch.bfloat16,
                                       attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(seed * 7)
    for _ in range(5):
        prompts = make_prompts(gen, config.vocab_size, info["special"], bos)
        entries = []
        for ids in prompts:
            tokens = greedy_generate(ref, ids, NEW_TOKENS)
            manual, margin = greedy_manual(ref, ids, NEW_TOKENS)
            if margin < MIN_GREEDY_MARGIN:
                break  # A near-tie may flip on rounding alone: redraw.
            if tokens != manual:
                raise RuntimeError(f"{out_dir}: generate() and the cache-free "
                                   f"greedy loop disagree for {ids}")
            logits = ref(torch.tensor([ids])).logits[0]
            entry = {"ids": ids, "greedy_tokens": tokens,
                     "greedy_min_margin": sig6(margin)}
            if len(ids) <= FULL_LOGITS_MAX_LEN:
                entry["logits"] = rows(logits)
                if bf is not None:
                    entry["logits_bf16_compute"] = rows(
                        bf(torch.tensor([ids])).logits[0])
            else:
                entry["last_logits"] = rows(logits[-1:])[0]
            entries.append(entry)
        if len(entries) == len(prompts):
            return entries
    return None


def build_variant(index, name, config_cls, model_cls, tok_kind, kwargs, extras,
                  tokenizer_dirs):
    out_dir = MODELS_OUT / name

    tok_dir = tokenizer_dirs.get(tok_kind)
    is_llama_like = tok_kind == "metaspace"
    if tok_dir is not None:
        info = tokenizer_info(tok_dir)
    else:
        info = {"vocab_size": DEFAULT_VOCAB,
                "special": {0, 1, 2} if is_llama_like else {DEFAULT_VOCAB - 1},
                "bos": 1 if is_llama_like else None,
                "eos": 2 if is_llama_like else DEFAULT_VOCAB - 1}
    bos = info["bos"] if is_llama_like else None
    if is_llama_like and bos is None:
        bos = 1
    eos = info["eos"] if info["eos"] is not None else (2 if is_llama_like else None)

    kwargs = dict(kwargs)
    attn_impl = kwargs.pop("attn_implementation")
    config = config_cls(vocab_size=info["vocab_size"], bos_token_id=bos,
                        eos_token_id=eos, pad_token_id=None, **kwargs)
    config._attn_implementation = attn_impl
    stored_dtype = extras.get("dtype", torch.float32)
    # A random model whose greedy path from some prompt (e.g. the fixed
    # [BOS]) nearly ties is re-drawn with the next seed.
    for seed_try in range(10):
        seed = SEED + 1000 * index + seed_try
        entries = make_model_and_record(
            out_dir, seed, config, model_cls, stored_dtype, extras, info, bos,
            eos, tok_dir)
        if entries is not None:
            break
    else:
        raise RuntimeError(f"{name}: every seed gave a greedy near-tie")
    ref = model_cls.from_pretrained(out_dir, dtype=torch.float32,
                                    attn_implementation="eager").eval()
    golden = {
        "model": name,
        "architecture": model_cls.__name__,
        "stored_dtype": str(stored_dtype).replace("torch.", ""),
        "vocab_size": config.vocab_size,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tokenizer": tok_kind if tok_dir is not None else None,
        "seed": seed,
        "made_with": {"torch": torch.__version__,
                      "transformers": transformers.__version__},
    }
    golden["prompts"] = entries
    distinct = len(set(t for e in entries for t in e["greedy_tokens"]))
    golden["distinct_greedy_tokens"] = distinct

    if extras.get("skips"):
        ids = entries[1]["ids"]  # The 7-token prompt.
        base = ref(torch.tensor([ids])).logits[0]
        for key, kw, skip in (
                ("skip_attention_1", {"attention_layer": 1},
                 {"attention": [False, True], "mlp": []}),
                ("skip_mlp_0", {"mlp_layer": 0},
                 {"attention": [], "mlp": [True, False]})):
            logits = skip_logits(ref, ids, **kw)
            golden[key] = {
                "ids": ids,
                "skip": skip,
                "logits": rows(logits),
                "max_abs_diff_from_unskipped":
                    sig6((logits - base).abs().max().item()),
            }
    if "rope_scaling" in kwargs:
        # The scaling must change what is recorded, or the test could pass
        # an engine that ignores it: same weights, rope_scaling dropped.
        plain_kwargs = dict(kwargs)
        plain_kwargs.pop("rope_scaling")
        unscaled_config = config_cls(
            vocab_size=config.vocab_size, bos_token_id=bos, eos_token_id=eos,
            pad_token_id=None, **plain_kwargs)
        unscaled_config._attn_implementation = attn_impl
        unscaled = model_cls(unscaled_config).eval()
        unscaled.load_state_dict(ref.state_dict())
        ids = entries[1]["ids"]
        diff = (unscaled(torch.tensor([ids])).logits[0] -
                ref(torch.tensor([ids])).logits[0]).abs().max().item()
        if diff < 1e-2:
            raise RuntimeError(f"{name}: rope scaling barely changes logits")
        golden["max_abs_diff_without_rope_scaling"] = sig6(diff)
    (out_dir / "golden.json").write_text(
        json.dumps(golden, separators=(",", ":")))
    print(f"{name}: vocab {config.vocab_size}, {distinct} distinct greedy "
          f"tokens, min margin "
          f"{min(e['greedy_min_margin'] for e in entries):.4g}")


# ----------------------------------------------------------------------------
# stories260K vs llama2.c run.c.
# ----------------------------------------------------------------------------

def runc_decode(sp, prev, token):
    """llama2.c run.c decode(): piece of `token`, leading space dropped after
    BOS, <0xNN> pieces as the raw byte."""
    piece = sp.id_to_piece(token).replace("\u2581", " ")
    if prev == 1 and piece.startswith(" "):
        piece = piece[1:]
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        return bytes([int(piece[3:5], 16)])
    return piece.encode("utf-8")


def stories260k():
    model_dir = SHARED / "models" / "stories260K"
    if not model_dir.is_dir():
        print(f"stories260K: {model_dir} missing; skipped")
        return True
    import sentencepiece as spm

    ref_dir = model_dir / "llama2c"
    model = LlamaForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32,
        attn_implementation="eager").eval()
    reference = json.loads((ref_dir / "reference_greedy_n256_token_ids.json")
                           .read_text())
    got = [1] + greedy_generate(model, [1], 256)
    mismatch = next((i for i, (a, b) in enumerate(zip(got, reference))
                     if a != b), None)
    if mismatch is None and len(got) != len(reference):
        mismatch = min(len(got), len(reference))

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    prompt = [1] + sp.encode("Once upon a time")
    # run.c -n 64 runs 64 forward steps (positions 0..63) and prints the
    # piece of every token after BOS: prompt[1:] + (65 - len(prompt)) more.
    steps = 64
    generated = greedy_generate(model, prompt, steps + 1 - len(prompt))
    seq = prompt + generated
    text = b"".join(runc_decode(sp, seq[i - 1], seq[i])
                    for i in range(1, len(seq))) + b"\n"
    runc_text = (ref_dir /
                 "reference_runc_greedy_prompt_once_upon_a_time_n64.txt"
                 ).read_bytes()
    check = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "greedy_from_bos_n256_matches_reference": mismatch is None,
        "first_mismatch_index": mismatch,
        "bos_sampled_within_256": 1 in got[1:],
        "prompt_once_upon_a_time_ids": prompt,
        "prompted_n64_text_matches_runc": text == runc_text,
    }
    (GOLDEN / "stories260K_transformers_check.json").write_text(
        json.dumps(check, indent=1) + "\n")
    print("stories260K check:", json.dumps(check))

    logits = model(torch.tensor([prompt])).logits[0]
    (GOLDEN / "stories260K_logits.json").write_text(json.dumps({
        "prompt_text": "Once upon a time",
        "ids": prompt,
        "vocab_size": model.config.vocab_size,
        "made_with": {"torch": torch.__version__,
                      "transformers": transformers.__version__},
        "logits": rows(logits),
    }, separators=(",", ":")))
    return (check["greedy_from_bos_n256_matches_reference"] and
            check["prompted_n64_text_matches_runc"])


def main():
    torch.manual_seed(SEED)
    ensure_tokenizers()
    tokenizer_dirs = {}
    for kind in ("bytelevel", "metaspace"):
        d = TOKENIZERS / kind
        if (d / "tokenizer.json").exists():
            tokenizer_dirs[kind] = d
    print("tokenizers:", {k: str(v) for k, v in tokenizer_dirs.items()})
    MODELS_OUT.mkdir(parents=True, exist_ok=True)
    for index, variant in enumerate(VARIANTS):
        build_variant(index, *variant, tokenizer_dirs=tokenizer_dirs)
    if not stories260k():
        print("stories260K: transformers DISAGREES with llama2.c run.c")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
