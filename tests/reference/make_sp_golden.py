#!/usr/bin/env python3
"""Golden ids for litestage's own tokenizer.model reader (no libsentencepiece).

Purpose
  engine/tokenizer/sp_model.cc reads tokenizer.model (a serialized
  sentencepiece ModelProto) itself and sentencepiece_tokenizer.cc tokenizes
  with the shared SentencePiece-BPE code. This script records what the Python
  `sentencepiece` package makes of the same models, for
  tests/tokenizer/sp_model_test.cc:
    (a) stories260K's tokenizer.model ($LITESTAGE_SHARED/models/stories260K,
        LITESTAGE_SHARED defaults to ../shared): BPE, identity normalizer,
        byte_fallback, remove_extra_whitespaces and add_dummy_prefix on.
    (b) llama_bpe: a Llama-2-style model trained here with the sentencepiece
        trainer (model_type=bpe, vocab 800, byte_fallback, identity
        normalizer, remove_extra_whitespaces=false, split_digits,
        character_coverage 0.995 so rare characters (CJK, emoji) fall back to
        <0xNN> bytes) on CORPUS_TRAIN of make_tokenizer_golden.py plus the
        first 1500 lines of $LITESTAGE_SHARED/data/obqa/train.jsonl.
        num_threads=1 and no sentence sampling/shuffling keep it
        deterministic for a fixed sentencepiece version.
    (c) normalizer variants GGUF cannot describe, made by editing (b)'s
        ModelProto with sentencepiece_model_pb2: no_dummy_prefix
        (add_dummy_prefix=false), remove_ws (remove_extra_whitespaces=true),
        no_escape (escape_whitespaces=false); plus unused: (b) with the
        pieces "\u2581up" and "\u2581time" marked UNUSED, which
        sentencepiece's BPE never emits.
  Models of (b)/(c) go to tests/golden/tokenizers/sp/<name>/tokenizer.model
  (a directory holding only tokenizer.model, as LoadTokenizer sees it), and
  every model's ids to tests/golden/tokenizers/sp/<name>/encodings.json
  (stories260K: tests/golden/tokenizers/sp/stories260K_encodings.json).
  It also writes the fuzz_sp_model seeds under tests/fuzz/corpus/
  fuzz_sp_model/: llama_bpe.model (a copy of (b)) and minimal.model (ten
  hand-written pieces incl. a USER_DEFINED one, remove_extra_whitespaces
  off; sp_model_test.cc builds the same model byte by byte).

  Each record of CORPUS_TEST (make_tokenizer_golden.py: CJK, accents,
  emoji + ZWJ, whitespace runs, digits, code, newlines/tabs) holds
    ids            HF slow LlamaTokenizer legacy=True: the text cut at control
                   and unknown pieces, each other span through sp.encode
                   (litestage's semantics; equals sp.encode(text) whenever the
                   text spells no special piece, "plain_equal" says so);
    sp_encode      sp.encode(text) itself;
    sp_decode      sp.decode(ids);
    roundtrip      sp.decode(sp.encode(text)) == text.

How to run (from the repository root):
    python3 -m venv /tmp/venv-sp
    /tmp/venv-sp/bin/pip install sentencepiece==0.2.3 protobuf==7.36.2
    LITESTAGE_SHARED=/work/shared /tmp/venv-sp/bin/python \
        tests/reference/make_sp_golden.py
Pinned versions: sentencepiece 0.2.3, protobuf 7.36.2 (Python 3.11).
"""

import io
import json
import os
import sys
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "golden" / "tokenizers" / "sp"
SHARED = Path(os.environ.get("LITESTAGE_SHARED", str(REPO.parent / "shared")))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tokenizer_golden import CORPUS_TEST, CORPUS_TRAIN  # noqa: E402

# Extra cases: whitespace the normalizer variants treat differently.
EXTRA = [
    "a  b   c    d",
    " x ",
    "\u2581literal metaspace\u2581\u2581",
    "<unk> and <s> inside </s>",
    "12345 67890",
    "Once upon a time it was up to the time keeper",
]


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


def training_text():
    lines = [l for l in CORPUS_TRAIN.splitlines() if l.strip()]
    obqa = SHARED / "data" / "obqa" / "train.jsonl"
    with open(obqa, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 1500:
                break
            lines.append(line.rstrip("\n"))
    return lines


def train_llama_bpe():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=model,
        model_type="bpe",
        vocab_size=800,
        byte_fallback=True,
        character_coverage=0.995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def specials_of(proto):
    special_types = (model_pb2.ModelProto.SentencePiece.CONTROL,
                     model_pb2.ModelProto.SentencePiece.UNKNOWN)
    return {p.piece: i for i, p in enumerate(proto.pieces)
            if p.type in special_types}


def record(name, serialized, out_path):
    proto = model_pb2.ModelProto()
    proto.ParseFromString(serialized)
    sp = spm.SentencePieceProcessor(model_proto=serialized)
    specials = specials_of(proto)

    # HF slow LlamaTokenizer, legacy=True: leftmost special piece (longest
    # there) splits the text; every other span is encoded on its own.
    def encode(text):
        ids = []
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

    records = []
    for text in CORPUS_TEST + EXTRA:
        ids = encode(text)
        plain = sp.encode(text)
        records.append({
            "text": text,
            "ids": ids,
            "sp_encode": plain,
            "plain_equal": ids == plain,
            "sp_decode": sp.decode(ids),
            "roundtrip": sp.decode(plain) == text,
        })
    ns = proto.normalizer_spec
    write_json(out_path, {
        "tokenizer": name,
        "sentencepiece": spm.__version__,
        "vocab_size": sp.get_piece_size(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id(),
        "normalizer": {
            "add_dummy_prefix": ns.add_dummy_prefix,
            "remove_extra_whitespaces": ns.remove_extra_whitespaces,
            "escape_whitespaces": ns.escape_whitespaces,
        },
        "encodings": records,
    })
    print(f"{name}: {len(records)} records -> {out_path.relative_to(REPO)}")


def variant(serialized, **normalizer):
    proto = model_pb2.ModelProto()
    proto.ParseFromString(serialized)
    for key, value in normalizer.items():
        setattr(proto.normalizer_spec, key, value)
    return proto.SerializeToString()


def write_fuzz_seeds(llama_bpe):
    seeds = REPO / "tests" / "fuzz" / "corpus" / "fuzz_sp_model"
    seeds.mkdir(parents=True, exist_ok=True)
    (seeds / "llama_bpe.model").write_bytes(llama_bpe)
    T = model_pb2.ModelProto.SentencePiece
    m = model_pb2.ModelProto()
    for text, score, kind in [
            ("<unk>", 0, T.UNKNOWN), ("<s>", 0, T.CONTROL),
            ("</s>", 0, T.CONTROL), ("a", -1, T.NORMAL), ("b", -2, T.NORMAL),
            ("\u2581", -3, T.NORMAL), ("\u2581a", -4, T.NORMAL),
            ("ab", -5, T.NORMAL), ("\u2581ab", -6, T.NORMAL),
            ("<x>", 0, T.USER_DEFINED)]:
        p = m.pieces.add()
        p.piece, p.score, p.type = text, score, kind
    m.trainer_spec.model_type = model_pb2.TrainerSpec.BPE
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.remove_extra_whitespaces = False
    (seeds / "minimal.model").write_bytes(m.SerializeToString())


def mark_unused(serialized, pieces):
    proto = model_pb2.ModelProto()
    proto.ParseFromString(serialized)
    for p in proto.pieces:
        if p.piece in pieces:
            p.type = model_pb2.ModelProto.SentencePiece.UNUSED
    return proto.SerializeToString()


def main():
    stories = SHARED / "models" / "stories260K" / "tokenizer.model"
    record("stories260K", stories.read_bytes(),
           OUT / "stories260K_encodings.json")
    base = train_llama_bpe()
    models = {
        "llama_bpe": base,
        "no_dummy_prefix": variant(base, add_dummy_prefix=False),
        "remove_ws": variant(base, remove_extra_whitespaces=True),
        "no_escape": variant(base, escape_whitespaces=False),
        "unused": mark_unused(base, {"\u2581up", "\u2581time"}),
    }
    for name, serialized in models.items():
        directory = OUT / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.model").write_bytes(serialized)
        record(name, serialized, directory / "encodings.json")
    write_fuzz_seeds(base)


if __name__ == "__main__":
    main()
