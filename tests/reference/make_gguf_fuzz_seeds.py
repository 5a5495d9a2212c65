#!/usr/bin/env python3
"""Writes small seed files for the fuzz_gguf target
(tests/fuzz/corpus/fuzz_gguf/): valid GGUF v3 files with metadata of every
value type and tensors of several types, so the fuzzer starts from inputs
that reach the tensor-info and data-section checks.

Requirements (pinned): gguf==0.19.0 numpy==2.4.6
  .venv-gguf/bin/python tests/reference/make_gguf_fuzz_seeds.py
"""
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

OUT = os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus",
                   "fuzz_gguf")


def write(name, fill, alignment=None):
    path = os.path.join(OUT, name)
    w = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{path}: {os.path.getsize(path)} bytes")


def metadata_and_tensors(w):
    rng = np.random.default_rng(7)
    w.add_block_count(1)
    w.add_uint8("u8", 200)
    w.add_int8("i8", -3)
    w.add_uint16("u16", 999)
    w.add_int16("i16", -999)
    w.add_int32("i32", -70000)
    w.add_uint64("u64", 1 << 40)
    w.add_int64("i64", -(1 << 40))
    w.add_float32("f32", 0.25)
    w.add_float64("f64", -0.5)
    w.add_bool("flag", True)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0])
    w.add_array("tokenizer.ggml.token_type", [3, 3, 1, 1])
    data = rng.normal(size=(2, 32)).astype(np.float32)
    w.add_tensor("f32", data)
    for qtype in (T.Q4_1, T.Q8_0):
        w.add_tensor(qtype.name.lower(), gguf.quants.quantize(data, qtype),
                     raw_dtype=qtype)
    w.add_tensor("q6_k", rng.integers(0, 256, size=(1, 210), dtype=np.uint8),
                 raw_dtype=T.Q6_K)


def main():
    os.makedirs(OUT, exist_ok=True)
    write("seed_types.gguf", metadata_and_tensors)
    write("seed_align64.gguf", metadata_and_tensors, alignment=64)
    write("seed_empty.gguf", lambda w: None)


if __name__ == "__main__":
    main()
