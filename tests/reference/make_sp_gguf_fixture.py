#!/usr/bin/env python3
"""Writes the stories260K SentencePiece vocabulary as a tensor-free GGUF.

Purpose
  tests/tokenizer/gguf_tokenizer_test.cc loads the result with
  LoadTokenizer() and checks it against the independent golden ids of
  tests/golden/tokenizers/stories260K_encodings.json (made from the same
  tokenizer.model by make_tokenizer_golden.py).

  The tokenizer.ggml.* keys are written the way llama.cpp's
  convert_hf_to_gguf.py (_create_vocab_sentencepiece / _set_vocab_sentencepiece)
  writes a SentencePiece model: every piece with its score, token types
  NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6, pre
  "default", bos 1 / eos 2 / unk 0, add_bos_token true, add_eos_token false.

Input   $LITESTAGE_SHARED/models/stories260K/tokenizer.model
        (LITESTAGE_SHARED defaults to /work/shared)
Output  tests/golden/tokenizers/stories260K_vocab.gguf (a few KB)

Run     .venv-golden/bin/python tests/reference/make_sp_gguf_fixture.py
Pinned  gguf==0.19.0, sentencepiece (the .venv-golden versions)
"""
import os
from pathlib import Path

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LITESTAGE_SHARED", "/work/shared"))
MODEL = SHARED / "models" / "stories260K" / "tokenizer.model"
OUT = REPO / "tests" / "golden" / "tokenizers" / "stories260K_vocab.gguf"

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def main():
    sp = spm.SentencePieceProcessor(model_file=str(MODEL))
    proto = model_pb2.ModelProto()
    proto.ParseFromString(MODEL.read_bytes())
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        # Same order of checks as convert_hf_to_gguf.py.
        if sp.is_unknown(i):
            kind = UNKNOWN
        elif sp.is_control(i):
            kind = CONTROL
        elif sp.is_unused(i):
            kind = UNUSED
        elif sp.is_byte(i):
            kind = BYTE
        elif proto.pieces[i].type == model_pb2.ModelProto.SentencePiece.USER_DEFINED:
            kind = USER_DEFINED
        else:
            kind = NORMAL
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(kind)

    writer = gguf.GGUFWriter(str(OUT), "llama")
    writer.add_name("stories260K tokenizer (vocabulary only)")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(tokens)} tokens)")


if __name__ == "__main__":
    main()
