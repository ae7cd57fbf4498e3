"""Finetuning speed on the real SMS data: the book's loop vs gptclf's fast path vs HF Trainer.

Book settings: balanced 747/747, split 1,045/149/300 (no stratify), seed 123, gpt2-small with
random weights, last block + final norm trainable, AdamW lr 5e-5 wd 0.1, 5 epochs, batch 8.
Side by side, each arm in its own process (so its peak RSS is its own):

  (a) book   gptclf in book-faithful mode: --pooling last-position --pad-to longest-train --no-cache
  (b) fast   gptclf's default: frozen-trunk cache, length-bucketed batches, last-token pooling
  (b16)      the fast path with --precision bf16 (CPU autocast)
  (b-book)   the book's pooling and padding with the frozen-trunk cache (same math as (a): shows
             what the cache alone gains, and that it leaves the results as they were)
  (c) hf     transformers' GPT2ForSequenceClassification under Trainer, same frozen blocks,
             same data, epochs, batch size and optimizer, dynamic padding

    python benchmarks/finetune_speed.py            # the full book recipe (about 25 min on 2 cores)
    python benchmarks/finetune_speed.py --quick    # 500-row subset, 1 epoch (under 3 min)
    python benchmarks/finetune_speed.py --arms fast,hf

Needs the dev extra (transformers, accelerate) and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BPE_DIR, SMS_FILE, make_home, print_table, require_shared, run_child, run_finetune

from gptclf.model.tokenizer import load_tokenizer

ARMS = {
    "book": ("(a) book loop", ["--pooling", "last-position", "--pad-to", "longest-train", "--no-cache"]),
    "fast": ("(b) gptclf fast", []),
    "book-cached": (
        "(b-book) book pooling + cache",
        ["--pooling", "last-position", "--pad-to", "longest-train"],
    ),
    "fast-bf16": ("(b16) fast, bf16", ["--precision", "bf16"]),
    "hf": ("(c) HF Trainer", None),
}


def prepare_data(work: Path, home: Path, quick: bool, seed: int) -> Path:
    """Run ``gptclf prepare`` with the book's settings (on a 500-row balanced subset if quick)."""
    source = SMS_FILE
    if quick:
        lines = SMS_FILE.read_text(encoding="utf-8").splitlines()
        rng = random.Random(seed)
        spam = [x for x in lines if x.startswith("spam\t")]
        ham = [x for x in lines if x.startswith("ham\t")]
        subset = rng.sample(spam, 250) + rng.sample(ham, 250)
        source = work / "SMSSpamCollection"
        source.write_text("\n".join(subset) + "\n", encoding="utf-8")
    out = work / "data"
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "prepare",
        "--input",
        str(source),
        "--format",
        "sms",
        "--classes",
        "ham,spam",
        "--balance",
        "undersample",
        "--no-stratify",
        "--split",
        "0.7,0.1,0.2",
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--json",
    ]
    run_child(cmd, env={"GPTCLF_HOME": str(home)})
    return out


def run_arm(arm: str, data: Path, home: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    """One arm in a child process; returns timings, test accuracy and peak RSS."""
    if arm == "hf":
        result_file = work / "hf.json"
        cmd = [
            sys.executable,
            str(Path(__file__).with_name("hf_baseline.py")),
            "train",
            "--data",
            str(data),
            "--bpe-dir",
            str(BPE_DIR),
            "--workdir",
            str(work),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            "8",
            "--seed",
            str(args.seed),
            "--result",
            str(result_file),
        ]
        child = run_child(cmd)
        result = json.loads(result_file.read_text())
        result["peak_rss_mb"] = child.peak_rss_mb
        return result
    flags = [
        "--model", args.model, "--trainable", "last-block", "--epochs", str(args.epochs),
        "--batch-size", "8", "--lr", "5e-5", "--weight-decay", "0.1", *(ARMS[arm][1] or []),
    ]  # fmt: skip
    summary, child = run_finetune(data, "ham,spam", home, work / f"run-{arm}", args.seed, flags)
    return {
        "timings": summary["timings"],
        "test_accuracy": summary["test_accuracy"],
        "peak_rss_mb": child.peak_rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="500-row subset, 1 epoch")
    parser.add_argument("--arms", default="book,fast,fast-bf16,hf", help="comma-separated: " + ",".join(ARMS))
    parser.add_argument("--epochs", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--model", default="gpt2-small")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    args.epochs = args.epochs or (1 if args.quick else 5)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    require_shared()

    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        data = prepare_data(work, home, args.quick, args.seed)
        enc = load_tokenizer(BPE_DIR)
        train_texts = pd.read_csv(data / "train.csv", keep_default_na=False, dtype=str)["text"].tolist()
        train_tokens = sum(len(x) for x in enc.encode_ordinary_batch(train_texts))
        results = {}
        for arm in arms:
            print(f"running {ARMS[arm][0]} ...", file=sys.stderr, flush=True)
            results[arm] = run_arm(arm, data, home, work, args)

    rows = []
    for arm, r in results.items():
        t = r["timings"]
        total = sum(t.get(k, 0.0) for k in ("tokenise", "cache", "train", "evaluate"))
        r["total"] = total
        rows.append(
            [
                ARMS[arm][0],
                *(f"{t.get(k, 0.0):.1f}" for k in ("tokenise", "cache", "train", "evaluate")),
                f"{total:.1f}",
                f"{len(train_texts) * args.epochs / t['train']:.1f}",
                f"{train_tokens * args.epochs / t['train']:,.0f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{100 * r['test_accuracy']:.2f}%",
            ]
        )
    print(
        f"{args.model}, random weights, last-block, {args.epochs} epoch(s), batch 8, "
        f"{len(train_texts)} training texts ({train_tokens:,} tokens), {torch.get_num_threads()} threads"
    )
    print_table(
        [
            "arm",
            "tokenise s",
            "cache s",
            "train s",
            "evaluate s",
            "total s",
            "texts/s",
            "tokens/s",
            "peak RSS MB",
            "test acc",
        ],
        rows,
    )
    if "fast" in results:
        base = results["fast"]
        for arm in ("book", "hf", "fast-bf16", "book-cached"):
            if arm in results:
                r = results[arm]
                print(
                    f"{ARMS[arm][0]} / (b) fast: total {r['total'] / base['total']:.1f}x, "
                    f"train {r['timings']['train'] / base['timings']['train']:.1f}x"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
