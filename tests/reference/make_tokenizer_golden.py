#!/usr/bin/env python3
"""Trains two tiny tokenizers and records what Hugging Face makes of them.

Purpose
  litestage's tokenizer (engine/tokenizer/) must give the same ids, decoded
  text and chat prompts as Hugging Face. This script:
    (a) trains, with the `tokenizers` library on the embedded CORPUS_TRAIN, two
        small BPE tokenizers and saves tokenizer.json, tokenizer_config.json
        and special_tokens_map.json under tests/golden/tokenizers/<name>/:
          bytelevel  Qwen2 style: NFC, Split(Qwen2 regex) + ByteLevel, ChatML
                     special tokens, one non-special added token, the Qwen2.5
                     ChatML chat_template.
          metaspace  Llama-2 / TinyLlama style: normalizer Prepend("▁") +
                     Replace(" ", "▁"), byte_fallback BPE with <unk> <s> </s>
                     and <0x00>..<0xFF> as ids 0..258, TemplateProcessing BOS,
                     the Zephyr (TinyLlama chat) template, add_bos_token.
        plus metaspace_pre: the metaspace vocabulary behind a Metaspace
        pre-tokenizer (prepend_scheme "first") instead of the normalizer.
    (b) encodes CORPUS_TEST with transformers AutoTokenizer on each (with and
        without special tokens), decodes the ids (skip_special_tokens true and
        false) and writes tests/golden/tokenizers/<name>/encodings.json; does
        the same for the real stories260K tokenizer.model (LITESTAGE_SHARED,
        default ../shared) into tests/golden/tokenizers/stories260K_encodings.json
        using HF's slow LlamaTokenizer (legacy=True) semantics for ids: the
        text is cut at special tokens and each piece goes through
        sentencepiece.encode (transformers 5 has no slow Llama class, and its
        converted fast tokenizer ignores the model's remove_extra_whitespaces);
        decoded strings come from transformers AutoTokenizer.decode;
    (c) records apply_chat_template output for a few conversations and
        templates (ChatML Qwen2.5 and SmolLM2, Zephyr, Llama-2) in the same
        JSON files ("chat").

How to run (from the repository root):
    python3 -m venv .venv-tok
    .venv-tok/bin/pip install transformers==5.24.0 tokenizers==0.23.3 \
        sentencepiece==0.2.3 jinja2==3.1.6 protobuf==7.36.2
    .venv-tok/bin/python tests/reference/make_tokenizer_golden.py
  No torch needed. tests/reference/make_golden.py imports this file and calls
  main(). Training is deterministic for a fixed tokenizers version.

Pinned versions: transformers 5.24.0, tokenizers 0.23.3, sentencepiece 0.2.3,
jinja2 3.1.6, protobuf 7.36.2 (numpy 2.4.6, huggingface_hub 2.4.0 come with
transformers).
"""

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "golden" / "tokenizers"
SHARED = Path(os.environ.get("LITESTAGE_SHARED", str(REPO.parent / "shared")))

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS_TRAIN = """\
Once upon a time, there was a little girl named Lily. She liked to play outside in the sun.
One day, she saw a big red ball in the park. "Can I play with it?" she asked her mom.
Her mom said, "Yes, but be careful!" Lily ran and ran. They're happy, we'll see, I'd say it's fine.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.
In 2024 the price rose from $1,234.56 to $7,890.12 (an increase of 539.4%).
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

for (int i = 0; i < 10; ++i) { total += values[i] * 3; }
Le café est très bon. Ça va? Où est la bibliothèque? Das Mädchen läuft schnell über die Straße.
El niño comió una manzana. São Paulo é uma cidade grande. Smörgåsbord and naïve façade.
Zürich, Kraków, Reykjavík; résumé, coöperate, jalapeño.
日本語のテキストです。東京は大きな都市です。中文文本也很重要。
Привет, мир! Как дела? Ελληνικά γράμματα. مرحبا بالعالم
Emoji: 😀 👍 🎉 ❤️ 👨‍👩‍👧 🇫🇷
	Tabs	and  multiple   spaces
and blank lines

   leading spaces and trailing spaces   
email: someone@example.com, url: https://example.org/path?q=1&r=2#frag
JSON: {"key": [1, 2, 3], "nested": {"a": null, "b": true}}
Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 0x1F
The cat sat on the mat. The dog sat on the log. The bird sat in the tree.
She said that she would come back tomorrow, and then she went home to sleep.
Reading books is a wonderful way to learn new things about the world around us.
"""

CORPUS_TEST = [
    "",
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "Hello, World! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "They're sure it's fine; we'll see what I'd do. IT'S OK, WE'LL GO.",
    "trailing spaces   ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\r\nwindows\r\n",
    "   \n\n   \t  mixed whitespace \n ",
    "Numbers 1 12 123 1234 12345678 3.14159 -42 1e10",
    "def f(x):\n    return x * 2  # comment\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "Le café est très bon. Ça va? naïve façade",
    "Ångström vs A\u030angstro\u0308m (decomposed)",
    "日本語のテキスト。中文。한국어 텍스트",
    "Привет, мир! Ελληνικά.",
    "Emoji 😀👍🎉 and ZWJ 👨‍👩‍👧‍👦 family, flag 🇯🇵, heart ❤️",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<s>Hello</s> world <s> again",
    "inline <tool_call>{\"name\": \"f\"}</tool_call> done",
    "a",
    " ",
    "\n",
    "ÿþ\u0000\u0007 control chars \u200b zero width",
    "https://example.org/path?q=1&r=2#frag user@example.com",
    "Once upon a time, there was a little girl named Lily.",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝒜 and rare CJK 𠜎𠜱",
    "  \n  x\ta\n\n\tb 'S 'LL I'M  'll x' 123abc ٣٤ ½ \u00a0nbsp\u3000ideo",
    "<|im_end|>  <|im_start|> <|im_end|>\n\n",
]

# Extra strings for the pre-tokenizer regex goldens (splits.json).
SPLIT_EXTRA = [
    "1234567 12 3",
    "x  \n\n  y\r\n\r\nz \t \n",
    "?!... ---> ;; \"quoted\" (paren)\n\n",
    "don't DON'T it'S we'VE you'Re",
    "  \u2003em-space\u2003 and trailing\u00a0",
    "Ⅻ roman ² sup ①",
]

PATTERNS = {
    "gpt2": (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|"
             r"\s+(?!\S)|\s+"),
    "qwen2": QWEN2_REGEX,
    "llama3": QWEN2_REGEX.replace(r"\p{N}|", r"\p{N}{1,3}|"),
}

# Conversations for apply_chat_template.
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "Tell me a joke."},
     {"role": "assistant", "content": " Why did the chicken cross the road? "},
     {"role": "user", "content": "Why?\n\nTell me."}],
]

QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}")

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def training_lines():
    return [line for line in CORPUS_TRAIN.split("\n")] * 3


def train_bytelevel(out_dir):
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                            normalizers, pre_tokenizers, processors, trainers)

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated",
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=640, min_frequency=2, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tok.train_from_iterator(training_lines(), trainer=trainer)
    # A non-special added token, as Qwen2.5 has <tool_call>.
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("</tool_call>", special=False, normalized=False)])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "chat_template": QWEN25_TEMPLATE,
    }
    write_json(out_dir / "tokenizer_config.json", config)
    write_json(out_dir / "special_tokens_map.json", {
        "eos_token": {"content": "<|im_end|>", "lstrip": False,
                      "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    })


def train_metaspace(out_dir, pre_out_dir):
    from tokenizers import (Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)

    # Train with a Metaspace pre-tokenizer so merges stay inside words, then
    # lay the vocabulary out as Llama does: <unk> <s> </s>, 256 byte tokens,
    # then the learned pieces.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁",
                                                 prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=560, min_frequency=2,
        special_tokens=["<unk>", "<s>", "</s>"],
        show_progress=False)
    tok.train_from_iterator(training_lines(), trainer=trainer)
    data = json.loads(tok.to_str())
    learned = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in learned:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    data["model"]["vocab"] = vocab
    data["model"]["byte_fallback"] = True
    data["model"]["fuse_unk"] = True
    data["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    data["pre_tokenizer"] = None
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"content": "<s>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "__type": "AddedToken"},
        "eos_token": {"content": "</s>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "__type": "AddedToken"},
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": ZEPHYR_TEMPLATE,
    }
    special_map = {"bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "pad_token": "</s>"}
    for directory in (out_dir, pre_out_dir):
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "tokenizer_config.json", config)
        write_json(directory / "special_tokens_map.json", special_map)
    # Validate by loading with the library before saving.
    Tokenizer.from_str(json.dumps(data))
    write_json(out_dir / "tokenizer.json", data)
    pre = dict(data)
    pre["normalizer"] = None
    pre["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                            "prepend_scheme": "first", "split": False}
    pre["decoder"] = {"type": "Metaspace", "replacement": "▁",
                      "prepend_scheme": "first", "split": False}
    Tokenizer.from_str(json.dumps(pre))
    write_json(pre_out_dir / "tokenizer.json", pre)
    # metaspace_pre's decoder is Metaspace (no ByteFallback step): keep the
    # config without a chat template, it exists to test the pre-tokenizer.


def chat_records(tok, templates):
    records = []
    for name, template in templates:
        for conversation in CONVERSATIONS:
            if name == "llama2" and conversation[-1]["role"] != "user":
                continue
            for add_generation_prompt in (False, True):
                text = tok.apply_chat_template(
                    conversation, chat_template=template, tokenize=False,
                    add_generation_prompt=add_generation_prompt)
                records.append({
                    "template_name": name,
                    "template": template,
                    "bos_token": "<s>" if name == "llama2" else "",
                    "eos_token": "</s>" if name in ("llama2", "zephyr") else "",
                    "messages": conversation,
                    "add_generation_prompt": add_generation_prompt,
                    "text": text,
                })
    return records


def encode_records(encode, decode):
    records = []
    for text in CORPUS_TEST:
        ids = encode(text, False)
        ids_special = encode(text, True)
        records.append({
            "text": text,
            "ids": ids,
            "ids_with_special": ids_special,
            "decode": decode(ids_special, False),
            "decode_skip_special": decode(ids_special, True),
        })
    return records


def record_fast(name, templates):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    directory = OUT / name
    tok = AutoTokenizer.from_pretrained(str(directory))
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))

    def encode(text, special):
        ids = tok.encode(text, add_special_tokens=special)
        # The tokenizer.json alone must agree with transformers.
        assert ids == raw.encode(text, add_special_tokens=special).ids, (name, text)
        return ids

    def decode(ids, skip):
        return tok.decode(ids, skip_special_tokens=skip)

    write_json(directory / "encodings.json", {
        "tokenizer": name,
        "encodings": encode_records(encode, decode),
        "chat": chat_records(tok, templates),
    })


def record_stories260k():
    import sentencepiece as spm

    model_dir = SHARED / "models" / "stories260K"
    if not (model_dir / "tokenizer.model").exists():
        print(f"stories260K: {model_dir} missing; skipped")
        return
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}

    # HF slow LlamaTokenizer, legacy=True: split the text at special tokens
    # (longest first), sentencepiece-encode every other piece on its own.
    def encode(text, add_special):
        ids = [1] if add_special else []
        rest = text
        while rest:
            hits = [(rest.find(s), -len(s), s) for s in specials if s in rest]
            if not hits:
                ids += sp.encode(rest)
                break
            pos, _, s = min(hits)
            if pos > 0:
                ids += sp.encode(rest[:pos])
            ids.append(specials[s])
            rest = rest[pos + len(s):]
        return ids

    # Decode as transformers does (its converted tokenizer's decoder:
    # pieces with "▁" as space, <0xNN> as bytes, special tokens verbatim,
    # one leading space dropped). The slow class joins runs differently
    # around special tokens; the decoder chain is what Llama tokenizer.json
    # files ship, so litestage follows it.
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(str(model_dir))

    def decode(ids, skip):
        return fast.decode(ids, skip_special_tokens=skip)

    write_json(OUT / "stories260K_encodings.json", {
        "tokenizer": "stories260K",
        "note": "ids: sentencepiece per special-token-free piece (HF slow "
                "LlamaTokenizer legacy=True); decode: transformers "
                "AutoTokenizer.decode of those ids",
        "encodings": encode_records(encode, decode),
    })


def record_splits():
    from tokenizers import Regex, pre_tokenizers

    out = {}
    for name, pattern in PATTERNS.items():
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated",
                                     invert=False)
        out[name] = {
            "regex": pattern,
            "cases": [{"text": text,
                       "pieces": [p for p, _ in split.pre_tokenize_str(text)]}
                      for text in CORPUS_TEST + SPLIT_EXTRA],
        }
    write_json(OUT / "splits.json", out)


def main():
    import tokenizers
    import transformers

    print("tokenizers", tokenizers.__version__, "transformers",
          transformers.__version__)
    train_bytelevel(OUT / "bytelevel")
    train_metaspace(OUT / "metaspace", OUT / "metaspace_pre")
    record_fast("bytelevel", [("qwen2.5", QWEN25_TEMPLATE),
                              ("smollm2", SMOLLM2_TEMPLATE)])
    record_fast("metaspace", [("zephyr", ZEPHYR_TEMPLATE),
                              ("llama2", LLAMA2_TEMPLATE)])
    record_fast("metaspace_pre", [])
    record_stories260k()
    record_splits()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
