#!/usr/bin/env python3
"""Writes tests/model/gguf_dequant_golden.json: GGUF tensor rows of every type
litestage dequantizes, with gguf-py's dequantization (the reference
implementation of ggml's block layouts) as the expected fp32 values.

Per type, up to two rows of 256 elements:
  "quantized": random normal data through gguf.quants.quantize (types gguf-py
               can quantize), i.e. blocks as a converter writes them;
  "random":    random block bytes with sane f16 scale fields, so every code,
               scale and high-bit pattern occurs.
Bytes and expected values are hex (little-endian f32), so the file is exact.

Requirements (pinned): gguf==0.19.0 numpy==2.4.6
  python3 -m venv .venv-gguf && .venv-gguf/bin/pip install gguf==0.19.0 numpy==2.4.6
  .venv-gguf/bin/python tests/reference/make_dequant_golden.py
"""
import json
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

N = 256
# Byte offsets of the f16 scale fields inside each block.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
QUANTIZABLE = {T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
         T.Q4_K, T.Q5_K, T.Q6_K]


def raw_bytes(array):
    return np.ascontiguousarray(array).view(np.uint8).tobytes()


def main():
    rng = np.random.default_rng(1234)
    cases = []
    for qtype in TYPES:
        block, size = GGML_QUANT_SIZES[qtype]
        rows = []
        data = rng.normal(0, 1, size=(1, N)).astype(np.float32)
        if qtype == T.F32:
            rows.append(("quantized", raw_bytes(data)))
        elif qtype in QUANTIZABLE:
            rows.append(("quantized", raw_bytes(gguf.quants.quantize(data, qtype))))
        if qtype in F16_FIELDS:
            blob = bytearray(rng.integers(0, 256, size=N // block * size,
                                          dtype=np.uint8).tobytes())
            for b in range(N // block):
                for off in F16_FIELDS[qtype]:
                    scale = np.float16(rng.uniform(-0.05, 0.05))
                    blob[b * size + off:b * size + off + 2] = scale.tobytes()
            rows.append(("random", bytes(blob)))
        for kind, blob in rows:
            stored = np.frombuffer(blob, dtype=np.uint8).reshape(1, -1)
            if qtype == T.F32:
                expected = stored.view(np.float32)
            else:
                expected = gguf.quants.dequantize(stored, qtype)
            expected = expected.astype(np.float32).reshape(-1)
            assert expected.size == N and np.all(np.isfinite(expected))
            cases.append({
                "type": qtype.name, "type_id": int(qtype), "kind": kind,
                "n": N, "bytes_hex": blob.hex(),
                "expected_f32_hex": raw_bytes(expected).hex(),
            })
    out = {
        "generator": "tests/reference/make_dequant_golden.py",
        "versions": {"gguf": "0.19.0", "numpy": np.__version__},
        "cases": cases,
    }
    path = os.path.join(os.path.dirname(__file__), "..", "model",
                        "gguf_dequant_golden.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
