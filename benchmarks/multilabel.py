"""Multi-label accuracy and time on the generated ticket table (no real multi-label data set can be
had offline on these machines, so this measures the method on a table whose labels follow from its
words: four labels, a third of the rows with two or more, a sixth with none).

Each arm runs prepare --multi-label -> finetune -> evaluate --json through the CLI, in its own
process, and prints micro-F1, macro-F1, the exact-match accuracy and the wall time of finetune:

    python benchmarks/multilabel.py                      # 2,000 rows, tiny random model, 5 epochs
    python benchmarks/multilabel.py --rows 600 --arms tiny --epochs 3
    python benchmarks/multilabel.py --arms tiny,small    # small: gpt2-small (random weights)

Needs the tokenizer files in ../shared/data (GPTCLF_SHARED names another folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import BPE_DIR, REPO, make_home, print_table, run_child

sys.path.insert(0, str(REPO))
from tests.multilabel_helpers import LABELS, write_table

ARMS = {
    "tiny": ["--model", "n_layer=2,n_head=2,n_embd=32,n_positions=64", "--trainable", "all", "--lr", "2e-3"],
    "small": ["--model", "gpt2-small", "--trainable", "last-block", "--lr", "5e-5"],
}


def _gptclf(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def run_arm(name: str, work: Path, source: Path, epochs: int, env: dict[str, str]) -> list[str]:
    """One arm: finetune on the prepared table, evaluate the test split; a table row."""
    run = work / f"run-{name}"
    common = ["--data", str(work / "data"), "--weights", "random", "--device", "cpu", "--epochs", str(epochs)]
    trained = run_child(_gptclf("finetune", *common, *ARMS[name], "--out", str(run), "--json"), env)
    evaluated = run_child(_gptclf("evaluate", str(run), "--json", "--device", "cpu"), env)
    m = json.loads(evaluated.stdout)
    return [
        name, str(m["n"]), f"{m['micro_f1']:.4f}", f"{m['macro_f1']:.4f}", f"{m['subset_accuracy']:.4f}",
        f"{m['hamming_loss']:.4f}", f"{trained.seconds:.1f}", f"{trained.peak_rss_mb:,.0f}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--arms", default="tiny", help=f"comma-separated, of {', '.join(ARMS)}")
    args = parser.parse_args()
    if not (BPE_DIR / "encoder.json").is_file():
        sys.exit(f"benchmark needs the tokenizer files in {BPE_DIR} (set GPTCLF_SHARED)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {"GPTCLF_HOME": str(make_home(work)), "PYTHONPATH": str(REPO)}
        source = write_table(work / "tickets.csv", args.rows, seed=0)
        run_child(
            _gptclf("prepare", "--multi-label", "--input", str(source), "--classes", ",".join(LABELS),
                    "--split", "0.7,0.1,0.2", "--out", str(work / "data")), env,
        )  # fmt: skip
        rows = [run_arm(name, work, source, args.epochs, env) for name in args.arms.split(",")]
    print(f"generated table: {args.rows} rows, labels {', '.join(LABELS)}, {args.epochs} epochs")
    print_table(
        [
            "arm",
            "test texts",
            "micro-F1",
            "macro-F1",
            "exact match",
            "Hamming loss",
            "finetune s",
            "peak RSS MB",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
