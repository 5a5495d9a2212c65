#!/usr/bin/env python3
"""The Hugging Face transformers peer of `make bench`, and the bench models.

Tested with (bench/run.sh installs these when it makes its own venv):
  torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6
  tokenizers==0.23.3 (comes with transformers)

Two subcommands:

  prepare  Creates each preset's model directory under --models-dir, once:
           <preset>-f32/ and <preset>-bf16/, each a Hugging Face model
           (config.json with the real shapes, random weights from a fixed
           seed, model.safetensors via save_pretrained) plus a byte-level
           BPE tokenizer.json (256 byte tokens) so the directory loads through
           the engine's normal path. The bf16 directory holds the same f32
           weights rounded to bf16. A directory is reused when its
           bench_model.json marker (written last) matches the recipe.

  measure  Times transformers (PyTorch on CPU) on those directories with
           torch.set_num_threads(--threads) under torch.inference_mode():
             * prefill: model(prompt[1, --prefill-tokens]) with the KV cache
               on and logits for the last position only (what generate()
               does), tokens/s = prompt tokens / seconds;
             * decode at each --batches size: prefill of --decode-prompt-tokens
               per row (untimed), then a greedy loop of --new-tokens - 1
               single-token steps over past_key_values, tokens/s =
               batch * steps / seconds.
           Each figure is the median of --reps timed repetitions after
           --warmup untimed ones. f32 directories run in float32; bf16
           directories run in torch.bfloat16, as a user of a bf16 checkpoint
           would. Writes JSON to --out.

Prompt token ids are shared with bench/engine_bench.cc: row r, position i is
(17 + 7919 * r + 104729 * i) % min(vocab_size, 32000).
"""

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time

# Bump when the recipe below changes so cached directories are rebuilt.
RECIPE_VERSION = 3
SEED = 1234

# The real shapes of the two presets (from their config.json on the Hub).
PRESETS = {
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
}
DTYPES = ("f32", "bf16")


def prompt_ids(rows, length, vocab_size):
    modulus = min(vocab_size, 32000)
    return [[(17 + 7919 * r + 104729 * i) % modulus for i in range(length)]
            for r in range(rows)]


def model_dir(models_dir, preset, dtype):
    return os.path.join(models_dir, f"{preset}-{dtype}")


def marker(preset, dtype):
    return {"recipe_version": RECIPE_VERSION, "seed": SEED, "preset": preset,
            "dtype": dtype, "shapes": PRESETS[preset]}


def is_prepared(path, preset, dtype):
    try:
        with open(os.path.join(path, "bench_model.json")) as f:
            return json.load(f) == marker(preset, dtype)
    except (OSError, ValueError):
        return False


def write_hub_style_config(path):
    """transformers 5 writes "rope_parameters" (rope_theta inside) and "dtype";
    the checkpoints people download (SmolLM2, Qwen2.5) carry the top-level
    "rope_theta" and "torch_dtype". Rewrite to the Hub layout, which
    transformers still reads, so both peers load the file a user would have
    (same convention as tests/reference/make_golden.py)."""
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    rope = config.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        config["rope_theta"] = rope.pop("rope_theta", 10000.0)
        config["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    if "dtype" in config:
        config["torch_dtype"] = config["dtype"]
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def write_byte_tokenizer(path, special_ids):
    """A GPT-2 style byte-level BPE tokenizer with the 256 byte tokens, plus
    "<|endoftext|>" as an added special token at each id of `special_ids`
    beyond them (the model's BOS/EOS, e.g. 151643 for Qwen2.5, where the real
    tokenizer has it).

    The weights are random, so any vocabulary is as good as any other; this
    one lets the directory load through the engine's ordinary tokenizer path.
    (The `tokenizers` library renumbers an added token past a gap to the next
    free id; neither peer tokenizes text here, both take the same token ids.)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # Byte order (GPT-2 bytes_to_unicode): printable bytes map to themselves.
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_to_char = dict(zip(bs, (chr(c) for c in cs)))
    assert set(byte_to_char.values()) == set(byte_chars)
    vocab = {byte_to_char[b]: b for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer_path = os.path.join(path, "tokenizer.json")
    tokenizer.save(tokenizer_path)
    with open(tokenizer_path) as f:
        document = json.load(f)
    for special_id in sorted({i for i in special_ids if i >= 256}):
        document["added_tokens"].append({
            "id": special_id, "content": "<|endoftext|>", "single_word": False,
            "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    with open(tokenizer_path, "w") as f:
        json.dump(document, f, ensure_ascii=False, indent=2)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast",
                   "add_bos_token": False, "model_max_length": 32768}, f, indent=2)


def prepare(args):
    import torch
    import transformers

    os.makedirs(args.models_dir, exist_ok=True)
    for preset in args.presets:
        paths = {d: model_dir(args.models_dir, preset, d) for d in DTYPES}
        if all(is_prepared(paths[d], preset, d) for d in DTYPES):
            print(f"[hf_peer] reusing {paths['f32']} and {paths['bf16']}", file=sys.stderr)
            continue
        shapes = dict(PRESETS[preset])
        architecture = shapes.pop("architectures")[0]
        model_type = shapes.pop("model_type")
        config = transformers.AutoConfig.for_model(model_type, **shapes)
        config.architectures = [architecture]
        torch.manual_seed(SEED)
        model_class = getattr(transformers, architecture)
        print(f"[hf_peer] creating {preset} (random weights, seed {SEED})", file=sys.stderr)
        model = model_class(config).to(torch.float32).eval()
        for dtype in DTYPES:
            path = paths[dtype]
            os.makedirs(path, exist_ok=True)
            marker_path = os.path.join(path, "bench_model.json")
            if os.path.exists(marker_path):
                os.remove(marker_path)
            if dtype == "bf16":
                model = model.to(torch.bfloat16)
            model.save_pretrained(path, safe_serialization=True)
            write_hub_style_config(path)
            write_byte_tokenizer(path, [shapes["bos_token_id"], shapes["eos_token_id"]])
            with open(marker_path, "w") as f:
                json.dump(marker(preset, dtype), f, indent=2)
            print(f"[hf_peer] wrote {path}", file=sys.stderr)
        del model


def median(values):
    return statistics.median(values) if values else None


def measure(args):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    out = {
        "peer": "transformers",
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "settings": {"prefill_tokens": args.prefill_tokens,
                     "decode_prompt_tokens": args.decode_prompt_tokens,
                     "new_tokens": args.new_tokens, "batches": args.batches,
                     "reps": args.reps, "warmup": args.warmup},
        "notes": ["bf16 directories run in torch.bfloat16 (f32 in float32)",
                  "prefill and decode prompts computed with logits for the last position only"],
        "results": [],
    }
    for preset in args.presets:
        for dtype in args.dtypes:
            path = model_dir(args.models_dir, preset, dtype)
            if not is_prepared(path, preset, dtype):
                sys.exit(f"hf_peer: {path} is missing or stale; run `hf_peer.py prepare` first")
            torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
            forward_params = inspect.signature(model.forward).parameters
            last_only = {}
            if "logits_to_keep" in forward_params:
                last_only = {"logits_to_keep": 1}
            elif "num_logits_to_keep" in forward_params:
                last_only = {"num_logits_to_keep": 1}
            # transformers >= 5.2x names the KV cache argument and output
            # field `cache`; older releases `past_key_values`.
            cache_name = "cache" if "cache" in forward_params else "past_key_values"
            vocab = model.config.vocab_size
            print(f"[hf_peer] {preset} {dtype}: timing (torch threads {torch.get_num_threads()})",
                  file=sys.stderr)

            def time_prefill():
                ids = torch.tensor(prompt_ids(1, args.prefill_tokens, vocab))
                start = time.perf_counter()
                model(ids, use_cache=True, **last_only)
                return time.perf_counter() - start

            def time_decode(batch):
                ids = torch.tensor(prompt_ids(batch, args.decode_prompt_tokens, vocab))
                result = model(ids, use_cache=True, **last_only)
                token = result.logits[:, -1].argmax(-1, keepdim=True)
                cache = getattr(result, cache_name)
                steps = args.new_tokens - 1
                start = time.perf_counter()
                for _ in range(steps):
                    result = model(token, use_cache=True, **{cache_name: cache})
                    cache = getattr(result, cache_name)
                    token = result.logits[:, -1].argmax(-1, keepdim=True)
                return time.perf_counter() - start, batch * steps

            entry = {"preset": preset, "dtype": dtype, "compute_dtype": str(torch_dtype),
                     "model_dir": path}
            with torch.inference_mode():
                for _ in range(args.warmup):
                    time_prefill()
                seconds = [time_prefill() for _ in range(args.reps)]
                entry["prefill_seconds"] = seconds
                entry["prefill_tokens_per_s"] = args.prefill_tokens / median(seconds)
                entry["decode"] = {}
                for batch in args.batches:
                    for _ in range(args.warmup):
                        time_decode(batch)
                    rates = []
                    for _ in range(args.reps):
                        elapsed, tokens = time_decode(batch)
                        rates.append(tokens / elapsed)
                    entry["decode"][str(batch)] = {"tokens_per_s": median(rates),
                                                   "samples_tokens_per_s": rates}
            print(f"[hf_peer]   prefill {entry['prefill_tokens_per_s']:.1f} tok/s, decode " +
                  ", ".join(f"b{b} {entry['decode'][str(b)]['tokens_per_s']:.2f} tok/s"
                            for b in args.batches), file=sys.stderr)
            out["results"].append(entry)
            del model
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "measure"])
    parser.add_argument("--models-dir", default="build/bench-models")
    parser.add_argument("--presets", default="smollm2-135m,qwen2.5-0.5b")
    parser.add_argument("--dtypes", default="f32,bf16")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--prefill-tokens", type=int, default=128)
    parser.add_argument("--decode-prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default="hf_peer.json")
    args = parser.parse_args()
    args.presets = [p for p in args.presets.split(",") if p]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    for preset in args.presets:
        if preset not in PRESETS:
            parser.error(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    for dtype in args.dtypes:
        if dtype not in DTYPES:
            parser.error(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if args.new_tokens < 2 or args.reps < 1 or args.threads < 1:
        parser.error("--new-tokens must be >= 2, --reps and --threads >= 1")
    if args.command == "prepare":
        prepare(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
