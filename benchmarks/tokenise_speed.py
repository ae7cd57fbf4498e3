"""Tokenising texts the way gptclf does (one text after another on the calling thread) against
tiktoken's batch call (a pool of 8 threads started per call), on SMS texts in chunks of
``--chunk`` (predict's chunk: 1,024). The ids are the same; the table gives texts/s of each,
alternating arms ``--rounds`` times.

    python benchmarks/tokenise_speed.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this clone's gptclf, not an installed one
from common import BPE_DIR, SMS_FILE, print_table, require_shared

from gptclf.model.tokenizer import encode_batch, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_shared()
    enc = load_tokenizer(BPE_DIR)
    texts = [
        line.split("\t", 1)[1] for line in SMS_FILE.read_text(encoding="utf-8").splitlines() if "\t" in line
    ]
    texts = (texts * (args.chunk * args.chunks // len(texts) + 1))[: args.chunk * args.chunks]
    chunks = [texts[i : i + args.chunk] for i in range(0, len(texts), args.chunk)]
    arms = {
        "gptclf (one thread)": lambda c: encode_batch(enc, c),
        "tiktoken batch (8 threads)": enc.encode_ordinary_batch,
    }
    assert all(encode_batch(enc, c) == enc.encode_ordinary_batch(c) for c in chunks[:2])
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, encode in arms.items():
            start = time.perf_counter()
            for chunk in chunks:
                encode(chunk)
            rates[name].append(len(texts) / (time.perf_counter() - start))
    rows = [
        [name, f"{min(r):,.0f}", f"{sorted(r)[len(r) // 2]:,.0f}", f"{max(r):,.0f}"]
        for name, r in rates.items()
    ]
    print(f"\ntokenising {len(texts):,} SMS texts in chunks of {args.chunk:,}, {args.rounds} rounds\n")
    print_table(["arm", "min texts/s", "median texts/s", "max texts/s"], rows)


if __name__ == "__main__":
    main()
