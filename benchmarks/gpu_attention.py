"""Scaled-dot-product attention kernels on a CUDA GPU, over batches of changing length.

gptclf's batches are grouped by length and padded to their own longest text, so nearly every
training step (and every cache-building and predict batch) brings a sequence length the step
before did not have. This times forward + backward of one attention call per batch over 128
distinct lengths (5..132 tokens, batch 8, gpt2-small's 12 heads of 64), twice: the cold pass
(every length new to the process) and the warm pass (every length seen), for each set of
kernels, in this order, in one process: torch's default choice, gptclf's
(``gptclf.device.CUDA_ATTENTION``: flash, memory-efficient, math; no cuDNN), and each kernel
alone. Two shapes: causal self-attention (the blocks) and one query per text against its keys
under a mask (the last block at the pooled position). Every row runs the same lengths, so a row
using cuDNN after "torch default" finds its plans already made: its cold pass is warm (the
per-length cost shows in the first row of each shape).

    python benchmarks/gpu_attention.py          # needs a CUDA GPU (exit 2 without one)
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gptclf.device as gdevice

KERNEL_SETS: dict[str, list[SDPBackend] | None] = {
    "torch default": None,
    "gptclf (no cuDNN)": [getattr(SDPBackend, name) for name in gdevice.CUDA_ATTENTION or ()],
    "cuDNN only": [SDPBackend.CUDNN_ATTENTION],
    "flash only": [SDPBackend.FLASH_ATTENTION],
    "efficient only": [SDPBackend.EFFICIENT_ATTENTION],
}


def timed_passes(lengths: list[int], one: Callable[[int], None]) -> tuple[float, float]:
    """Milliseconds per length of ``one(t)`` over ``lengths``: cold pass, then warm pass."""
    out = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for t in lengths:
            one(t)
        torch.cuda.synchronize()
        out.append((time.perf_counter() - start) * 1000 / len(lengths))
    return out[0], out[1]


def attention_call(shape: str, dtype: torch.dtype, kernels: list[SDPBackend] | None) -> Callable[[int], None]:
    dev = torch.device("cuda")

    def one(t: int) -> None:
        grad = {"device": dev, "dtype": dtype, "requires_grad": True}
        if shape == "causal":
            q, k, v = (torch.randn(8, 12, t, 64, **grad) for _ in range(3))
            extra: dict[str, object] = {"is_causal": True}
        else:
            q = torch.randn(8, 12, 1, 64, **grad)
            k, v = (torch.randn(8, 12, t, 64, **grad) for _ in range(2))
            pos = torch.randint(0, t, (8,), device=dev)
            extra = {"attn_mask": (torch.arange(t, device=dev)[None, :] <= pos[:, None]).view(8, 1, 1, t)}
        if kernels is None:
            y = F.scaled_dot_product_attention(q, k, v, **extra)
        else:
            with sdpa_kernel(kernels):
                y = F.scaled_dot_product_attention(q, k, v, **extra)
        y.float().sum().backward()

    return one


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_attention: needs a CUDA GPU; none is available here", file=sys.stderr)
        return 2
    print(
        f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)}"
    )
    lengths = list(range(5, 133))
    random.Random(0).shuffle(lengths)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for shape in ("causal", "one query, mask"):
            for name, kernels in KERNEL_SETS.items():
                try:
                    cold, warm = timed_passes(lengths, attention_call(shape, dtype, kernels))
                    rows.append((str(dtype)[6:], shape, name, f"{cold:.3f}", f"{warm:.3f}"))
                except RuntimeError:  # no kernel of the set takes these inputs
                    rows.append((str(dtype)[6:], shape, name, "n/a", "n/a"))
    print("\n| dtype | attention | kernels | cold ms/batch | warm ms/batch |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    return 0


if __name__ == "__main__":
    sys.exit(main())
