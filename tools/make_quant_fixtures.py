"""Writes tests/fixtures/dequant.json: random GGML blocks of every type ftedit decodes,
with the values the reference implementation (the `gguf` Python package, llama.cpp's own
gguf-py) dequantizes them to.

    python3 -m pip install gguf==0.19.0 numpy
    python3 tools/make_quant_fixtures.py
"""
import json
import pathlib

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(20261127)

# (type, block bytes, byte offsets of f16 scale fields, blocks)
LAYOUTS = {
    "Q4_0": (T.Q4_0, 18, [0], 4),
    "Q4_1": (T.Q4_1, 20, [0, 2], 4),
    "Q5_0": (T.Q5_0, 22, [0], 4),
    "Q5_1": (T.Q5_1, 24, [0, 2], 4),
    "Q8_0": (T.Q8_0, 34, [0], 4),
    "Q4_K": (T.Q4_K, 144, [0, 2], 2),
    "Q5_K": (T.Q5_K, 176, [0, 2], 2),
    "Q6_K": (T.Q6_K, 210, [208], 2),
}


def f16_bytes(x):
    return np.array([x], dtype=np.float16).tobytes()


out = {"generator": "tools/make_quant_fixtures.py", "reference": "gguf 0.19.0, gguf.quants.dequantize", "types": {}}
for name, (ty, size, scales, blocks) in LAYOUTS.items():
    raw = bytearray(rng.integers(0, 256, size * blocks, dtype=np.uint8).tobytes())
    for b in range(blocks):
        for off in scales:
            # Sane, signed scales: random bytes could spell NaN or infinity.
            raw[b * size + off : b * size + off + 2] = f16_bytes(rng.uniform(-0.05, 0.05))
    vals = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), ty).reshape(-1)
    out["types"][name] = {"hex": bytes(raw).hex(), "values": [float(v) for v in vals.astype(np.float32)]}

for name, dtype, ty in [("F16", np.float16, T.F16), ("F32", np.float32, T.F32)]:
    vals = rng.normal(0, 2, 64).astype(dtype)
    out["types"][name] = {"hex": vals.tobytes().hex(), "values": [float(v) for v in dequantize(vals.view(np.uint8), ty).astype(np.float32)]}
# BF16: the top half of f32 bit patterns.
f32 = rng.normal(0, 2, 64).astype(np.float32)
bf = (f32.view(np.uint32) >> 16).astype(np.uint16)
out["types"]["BF16"] = {"hex": bf.tobytes().hex(), "values": [float(v) for v in dequantize(bf.view(np.uint8), T.BF16).astype(np.float32)]}

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dequant.json"
path.write_text(json.dumps(out, indent=0) + "\n")
print(f"wrote {path}")
