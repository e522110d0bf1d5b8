"""A real LoRA adapter GGUF for the Gemma 3 270M demo model, written with the `gguf` library.

Random low-rank updates of every layer's attention query projection: small enough to keep
the model coherent, large enough to change a greedy answer. llama.cpp checks each pair's
shapes against the base model's tensors when it loads the adapter (`broken=True` writes
pairs of the wrong shape, which it refuses).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD, N_Q, LAYERS = 640, 1024, 18  # Gemma 3 270M: embedding width, attn_q outputs, blocks


def write_lora(path: Path, rank: int = 4, scale: float = 0.5, broken: bool = False) -> Path:
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    rng = np.random.default_rng(0)
    width = N_EMBD - 40 if broken else N_EMBD
    for layer in range(LAYERS):
        a = rng.standard_normal((rank, width)) * scale  # numpy shape = GGUF ne reversed
        b = rng.standard_normal((N_Q, rank)) * scale
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_a", a.astype(np.float32))
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
