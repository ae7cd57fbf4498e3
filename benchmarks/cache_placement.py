"""The frozen-trunk cache in RAM against the cache in a file read a batch at a time: speed and memory.

`gptclf finetune` with the default scope (last block + final norm + head), each run its own process,
the two arms alternating in one run (RAM, file, RAM, file, ...) so that they share the machine's
state:

    RAM    --cache-memory 64GB   (every cache in RAM: what the old default of a quarter of RAM gave)
    file   --cache-memory 0      (every cache in a file in TMPDIR, read a batch at a time)

on two tables:

    sms     the SMS book split (1,045/149/300), gpt2-small's depth at width 384
            (n_layer=12,n_head=12,n_embd=384), the book's recipe (5 epochs, batch 8)
    table   a generated 3-class table of --rows rows (benchmarks/batch_predict.py's), a tiny model
            (n_layer=2,n_head=2,n_embd=64,n_positions=64), 3 epochs: the step is so small that reading
            the cache is as large a part of it as it can be

The table: per arm the median over --rounds of the training seconds (the cache read every step),
the cache build's seconds, the whole run's seconds and the peak RSS, and the test accuracy (the
same in both arms: the states are the same bytes).

    python benchmarks/cache_placement.py                 # both tables, 3 rounds, 100,000 rows
    python benchmarks/cache_placement.py --quick         # 1 round, 20,000 rows

Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_predict import TINY, WORDS, generated_table
from common import make_home, print_table, require_shared, run_child, run_finetune
from finetune_speed import prepare_data

ARMS = {"RAM": ["--cache-memory", "64GB"], "file": ["--cache-memory", "0"]}
SMS_MODEL = "n_layer=12,n_head=12,n_embd=384"


def prepare_table(work: Path, home: Path, rows: int, seed: int) -> Path:
    source = work / "table.csv"
    generated_table(source, rows, seed)
    out = work / "table-data"
    cmd = [sys.executable, "-m", "cli.main", "prepare", "--input", str(source), "--out", str(out), "--json"]
    run_child(cmd, env={"GPTCLF_HOME": str(home)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 20,000 rows")
    parser.add_argument("--rounds", type=int, default=None, help="runs of each arm (default 3)")
    parser.add_argument(
        "--rows", type=int, default=None, help="rows of the generated table (default 100,000)"
    )
    parser.add_argument("--tables", default="sms,table", help="sms, table or both")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    require_shared()
    rounds = args.rounds or (1 if args.quick else 3)
    rows = args.rows or (20_000 if args.quick else 100_000)
    results = []
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-cache-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        jobs = []
        if "sms" in args.tables:
            data = prepare_data(work, home, False, args.seed)
            jobs.append(("sms", data, "ham,spam", ["--model", SMS_MODEL]))
        if "table" in args.tables:
            data = prepare_table(work, home, rows, args.seed)
            flags = ["--model", TINY, "--epochs", "3"]
            jobs.append((f"table, {rows:,} rows", data, ",".join(sorted(WORDS)), flags))
        for name, data, classes, flags in jobs:
            seen: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
            for _ in range(rounds):
                for arm, arm_flags in ARMS.items():
                    out = work / f"run-{arm}"
                    summary, child = run_finetune(
                        data, classes, home, out, args.seed, [*flags, *arm_flags, "--force"]
                    )
                    cache, timings = summary["cache"], summary["timings"]
                    assert isinstance(cache, dict) and isinstance(timings, dict)
                    want = "memory" if arm == "RAM" else "disk"
                    assert set(str(cache["location"]).split("+")) == {want}, (arm, cache)
                    seen[arm].append(
                        {
                            "train": float(timings["train"]),
                            "cache": float(timings["cache"]),
                            "total": child.seconds,
                            "rss": child.peak_rss_mb,
                            "acc": float(summary["test_accuracy"]),  # type: ignore[arg-type]
                            "mib": float(cache["bytes"]) / 2**20,
                        }
                    )
            base = statistics.median(r["train"] for r in seen["RAM"])
            for arm, runs in seen.items():
                med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                results.append(
                    [
                        name, arm, f"{med['mib']:,.1f}", f"{med['train']:.1f}",
                        " / ".join(f"{r['train']:.1f}" for r in runs), f"{med['train'] / base:.2f}x",
                        f"{med['cache']:.1f}", f"{med['total']:.1f}", f"{med['rss']:,.0f}",
                        f"{med['acc']:.4f}",
                    ]
                )  # fmt: skip
    print(f"\nfinetune, default scope, cache in RAM or in a file; median of {rounds} alternating rounds\n")
    print_table(
        [
            "table", "cache", "cache MiB", "train s", "train s each", "train vs RAM", "build s", "total s",
            "peak RSS MB", "test acc",
        ],
        results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
