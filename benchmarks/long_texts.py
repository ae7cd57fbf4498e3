"""Long texts: peak memory of ``predict --long-texts window`` on a stream with some very long texts,
and (``--accuracy``) test accuracy of each ``--long-texts`` mode where the deciding word comes late.

Two streams of the same short texts (drawn from the SMS Spam Collection in ../shared): one as is,
one with ``--long`` of them replaced by lines of ``--long-tokens`` tokens each (one-token words).
Each is classified in its own process by a run directory with random weights (memory does not depend
on what the weights learnt), under ``--long-texts window``; the table gives each process's peak RSS.
The windows of a long text go through the same batches as other texts, a bounded number at a time,
so the target is a peak RSS within 10% of the stream without the long texts.

``--accuracy`` instead generates a table of 300 texts of 150-400 tokens (one filler word repeated)
whose class word (``prize`` or ``dinner``) comes only after the first 100 tokens, prepares it
60/20/20 and finetunes a tiny random model (``--max-length 64``, every layer trainable, 15 epochs,
cosine schedule, gradients clipped at 1) once per mode.

    python benchmarks/long_texts.py                      # 10,000 texts, 100 of 20,000 tokens, gpt2-small
    python benchmarks/long_texts.py --texts 2000 --long 20 \
        --model n_layer=2,n_head=2,n_embd=64,n_positions=128
    python benchmarks/long_texts.py --accuracy           # truncate vs head-tail vs window, ~1 min

Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMS_FILE, make_home, make_run, print_table, require_shared, run_child, run_finetune

WORDS = ["apple", "river", "stone", "cloud", "paper", "green", "music", "table", "light", "horse"]


def write_stream(path: Path, n: int, n_long: int, long_tokens: int, seed: int) -> None:
    """``n`` SMS texts one a line; ``n_long`` of them, spread evenly, replaced by long lines."""
    texts = [line.split("\t", 1)[1] for line in SMS_FILE.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    lines = [rng.choice(texts) for _ in range(n)]
    long_rng = random.Random(seed + 1)
    for k in range(n_long):
        lines[k * n // n_long] = " ".join(long_rng.choice(WORDS) for _ in range(long_tokens))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def long_table(path: Path, n: int, seed: int, skip: int = 100) -> None:
    """A CSV of ``n`` texts of 150-400 words whose class word comes only after the first ``skip``."""
    rng = random.Random(seed)
    rows = ["text,label"]
    for i in range(n):
        label, key = (("spam", "prize"), ("ham", "dinner"))[i % 2]
        size = rng.randrange(150, 400)
        words = [WORDS[0]] * size  # one filler word: a tiny model finds the class word fast
        words.insert(rng.randrange(skip, size), key)
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def accuracy(seed: int) -> None:
    """Test accuracy of each mode on the generated table (see the module docstring)."""
    tiny = "n_layer=2,n_head=2,n_embd=32,n_positions=64"
    flags = ["--model", tiny, "--max-length", "64", "--trainable", "all", "--lr", "3e-3", "--epochs", "15",
             "--clip-grad", "1.0", "--schedule", "cosine"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        long_table(work / "long.csv", 300, seed)
        cmd = [
            sys.executable, "-m", "cli.main", "prepare", "--input", str(work / "long.csv"),
            "--out", str(work / "data"), "--split", "0.6,0.2,0.2", "--seed", str(seed),
        ]  # fmt: skip
        run_child(cmd, env={"GPTCLF_HOME": str(home)})
        for mode in ("truncate", "head-tail", "window"):
            for agg in ("mean", "max") if mode == "window" else ("mean",):
                extra = ["--long-texts", mode, "--aggregate", agg]
                summary, child = run_finetune(
                    work / "data", "spam,ham", home, work / mode / agg, seed, flags + extra
                )
                name = f"window ({agg})" if mode == "window" else mode
                test = summary["test_accuracy"]
                rows.append([name, f"{test:.3f}", f"{summary['best_val_acc']:.3f}", f"{child.seconds:.1f}"])
    print(f"300 texts of 150-400 tokens, class word after token 100, --max-length 64, {tiny}, seed {seed}")
    print_table(["--long-texts", "test accuracy", "best val accuracy", "seconds"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=10_000, help="texts per stream (default 10,000)")
    parser.add_argument("--long", type=int, default=100, help="long texts in the second stream (default 100)")
    parser.add_argument("--long-tokens", type=int, default=20_000, help="tokens of each long text")
    parser.add_argument("--model", default="gpt2-small", help="preset or custom size (default gpt2-small)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--accuracy", action="store_true", help="accuracy of each mode instead of memory")
    args = parser.parse_args()
    require_shared()
    if args.accuracy:
        accuracy(args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        make_run(work / "run", args.model, args.seed)
        results = []
        for label, n_long in (("without long texts", 0), (f"with {args.long} long texts", args.long)):
            stream = work / f"stream-{n_long}.txt"
            write_stream(stream, args.texts, n_long, args.long_tokens, args.seed)
            cmd = [
                sys.executable, "-m", "cli.main", "predict", str(work / "run"), "--input", str(stream),
                "--format", "jsonl", "--batch-size", str(args.batch_size), "--long-texts", "window",
                "--device", "cpu", "--precision", "fp32",
            ]  # fmt: skip
            res = run_child(cmd, env={"GPTCLF_HOME": str(home)}, stdout_path=work / "out.jsonl")
            lines = (work / "out.jsonl").read_text(encoding="utf-8").count("\n")
            assert lines == args.texts, f"gptclf predict wrote {lines} lines for {args.texts} texts"
            results.append((label, res.seconds, res.peak_rss_mb))
    print(
        f"model {args.model}, batch {args.batch_size}, {args.texts:,} texts, long texts of "
        f"{args.long_tokens:,} tokens, --long-texts window, {torch.get_num_threads()} threads"
    )
    print_table(
        ["stream", "seconds", "peak RSS MB"], [[label, f"{s:.1f}", f"{rss:.0f}"] for label, s, rss in results]
    )
    print(f"\npeak RSS with / without the long texts: {results[1][2] / results[0][2]:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
