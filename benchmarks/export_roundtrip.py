"""``gptclf export --format transformers`` and ``gptclf import``: time, memory, size and agreement.

A run with random weights (2 classes, a calibration temperature stored, the head's bias not zero)
is exported, loaded by transformers' ``pipeline("text-classification")`` and imported back; each
CLI step runs in its own process (its own peak RSS). The agreement columns are the largest
difference of any class probability on SMS texts against ``gptclf predict`` on the original run.

    python benchmarks/export_roundtrip.py                    # gpt2-small, 200 texts
    python benchmarks/export_roundtrip.py --model n_layer=2,n_head=2,n_embd=64 --texts 50

Needs the dev extra (transformers) and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMS_FILE, make_run, print_table, require_shared, run_child

from gptclf.tasks.calibration import Calibration

CLASSES = ["ham", "spam"]


def make_random_run(run_dir: Path, model_spec: str, seed: int, max_length: int) -> None:
    """A run directory with random weights, a 2-class head and a temperature of 1.7."""
    calibration = Calibration(1.7, 0.5, 0.4, 0.1, 0.05).to_dict()
    make_run(run_dir, model_spec, seed, max_length, calibration, tuple(CLASSES))


def predict_probs(run: Path, texts: Path) -> torch.Tensor:
    cmd = [sys.executable, "-m", "cli.main", "predict", str(run), "--input", str(texts), "--device", "cpu"]
    child = run_child([*cmd, "--precision", "fp32"])
    return torch.tensor([list(json.loads(line)["probs"].values()) for line in child.stdout.splitlines()])


def pipeline_probs(folder: Path, texts: list[str]) -> torch.Tensor:
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    rows = clf(texts, batch_size=16, truncation=True)
    return torch.tensor([[{d["label"]: d["score"] for d in row}[c] for c in CLASSES] for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-small", help="preset or custom size (default gpt2-small)")
    parser.add_argument("--texts", type=int, default=200, help="SMS texts compared (default 200)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    require_shared()
    lines = [line.split("\t", 1)[1] for line in SMS_FILE.read_text(encoding="utf-8").splitlines()]
    texts = random.Random(args.seed).sample(lines, args.texts)
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        make_random_run(work / "run", args.model, args.seed, args.max_length)
        (work / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        cli = [sys.executable, "-m", "cli.main"]
        exported = run_child([*cli, "export", str(work / "run"), "--out", str(work / "hf")])
        imported = run_child([*cli, "import", str(work / "hf"), "--out", str(work / "back")])
        want = predict_probs(work / "run", work / "texts.txt")
        via_pipeline = (pipeline_probs(work / "hf", texts) - want).abs().max().item()
        via_import = (predict_probs(work / "back", work / "texts.txt") - want).abs().max().item()
        size = sum(p.stat().st_size for p in (work / "hf").iterdir()) / 2**20
    rows = [
        ["export", f"{exported.seconds:.1f}", f"{exported.peak_rss_mb:,.0f}", f"{size:,.0f}"],
        ["import", f"{imported.seconds:.1f}", f"{imported.peak_rss_mb:,.0f}", ""],
    ]
    rows[0].append(f"{via_pipeline:.1e} (pipeline)")
    rows[1].append(f"{via_import:.1e} (predict on the imported run)")
    print(f"{args.model}, {args.texts} SMS texts, max length {args.max_length}, temperature 1.7")
    print_table(["step", "seconds", "peak RSS MB", "folder MB", "max abs diff of p vs gptclf predict"], rows)


if __name__ == "__main__":
    main()
