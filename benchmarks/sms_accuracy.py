"""Test accuracy and time on the real SMS data with ``--weights random`` (no pretrained weights here).

Book split (747/747 balanced, 1,045/149/300, seed 123). Rows:

  small-last-block   gpt2-small, last block + final norm trained, 5 epochs, the book's optimizer
  tiny-all           a small custom GPT (n_layer=4, n_head=4, n_embd=256) trained whole from random
                     init: every block, lr 5e-4, 10 epochs
  bag-of-words       a logistic regression on word counts, the baseline a finetuned GPT-2 must beat

    python benchmarks/sms_accuracy.py
    python benchmarks/sms_accuracy.py --rows tiny-all,bag-of-words

Needs ../shared/data. Each gptclf row runs ``gptclf finetune`` in its own process.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_home, print_table, require_shared, run_finetune
from finetune_speed import prepare_data

ROWS: dict[str, tuple[str, list[str]]] = {
    "small-last-block": (
        "gpt2-small, last-block, 5 epochs",
        ["--model", "gpt2-small", "--trainable", "last-block", "--epochs", "5"],
    ),
    "tiny-all": (
        "n_layer=4,n_head=4,n_embd=256, all, 10 epochs, lr 5e-4",
        ["--model", "n_layer=4,n_head=4,n_embd=256", "--trainable", "all", "--epochs", "10", "--lr", "5e-4"],
    ),
}


def bag_of_words(data: Path, classes: list[str], seed: int) -> dict[str, float]:
    """Logistic regression on lower-cased word counts, full-batch L-BFGS: accuracy and seconds."""
    t0 = time.perf_counter()
    frames = {s: pd.read_csv(data / f"{s}.csv", keep_default_na=False, dtype=str) for s in ("train", "test")}

    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9£$]+", text.lower())

    vocab = {
        w: i for i, (w, _) in enumerate(Counter(w for t in frames["train"]["text"] for w in words(t)).items())
    }

    def matrix(texts: list[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), len(vocab))
        for row, text in enumerate(texts):
            for w in words(text):
                if w in vocab:
                    x[row, vocab[w]] += 1.0
        return torch.log1p(x)

    index = {c: i for i, c in enumerate(classes)}
    x_train, x_test = matrix(frames["train"]["text"].tolist()), matrix(frames["test"]["text"].tolist())
    y_train = torch.tensor([index[c] for c in frames["train"]["label"]])
    y_test = torch.tensor([index[c] for c in frames["test"]["label"]])
    torch.manual_seed(seed)
    linear = torch.nn.Linear(len(vocab), len(classes))
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x_train), y_train) + 1e-3 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = (linear(x_test).argmax(1) == y_test).float().mean().item()
    return {"test_accuracy": acc, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="small-last-block,tiny-all,bag-of-words")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    require_shared()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        data = prepare_data(work, home, quick=False, seed=args.seed)
        classes = json.loads((data / "labels.json").read_text())["classes"]
        for row in rows:
            print(f"running {row} ...", file=sys.stderr, flush=True)
            if row == "bag-of-words":
                r = bag_of_words(data, classes, args.seed)
                results.append(
                    [
                        "bag-of-words logistic regression",
                        f"{100 * r['test_accuracy']:.2f}%",
                        "-",
                        f"{r['seconds']:.1f}",
                        "-",
                    ]
                )
                continue
            label, flags = ROWS[row]
            s, child = run_finetune(data, ",".join(classes), home, work / f"run-{row}", args.seed, flags)
            results.append(
                [
                    label,
                    f"{100 * s['test_accuracy']:.2f}%",
                    f"{100 * s['best_val_acc']:.2f}%",
                    f"{s['timings']['total']:.1f}",
                    f"{child.peak_rss_mb:,.0f}",
                ]
            )
    print(f"SMS book split, random weights, seed {args.seed}, {torch.get_num_threads()} threads")
    print_table(["model", "test acc", "best val acc", "seconds", "peak RSS MB"], results)


if __name__ == "__main__":
    main()
