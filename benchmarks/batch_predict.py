"""Batch jobs at scale: predict's inputs, torchrun, resuming, and the memory of every verb on big tables.

Part 1, ``gptclf predict`` on a gpt2-small run (random weights: speed and memory do not depend on
what the weights learnt) over SMS texts from ../shared repeated to ``--rows`` rows, each row of the
table its own command (start-up and model loading included), with nothing else on the cores:

    CSV input           predict RUN --input texts.csv --text-column text --output out.jsonl
    Parquet input       the same rows as a Parquet file (row groups of 8,192 rows)
    torchrun, 2 ranks   torchrun --nproc-per-node 2 -m gptclf predict ... (the cores divided between them)
    killed at 50%       the CSV job killed (SIGKILL) while writing the chunk after half of them,
                        then ``--resume``: total time and texts classified by both processes

Part 2, peak RSS and wall time of ``prepare``, ``evaluate --input`` (the table),
``evaluate --split train`` (the largest split of the prepared table) and ``finetune`` (1 epoch: every
block frozen; the default scope, the last block trained; the same with its cache held in RAM, as the
old default did) with a tiny model on a generated 3-class table (class-specific words and noise) of each size
in ``--sizes``.

    python benchmarks/batch_predict.py                 # 100,000 texts; tables of 100k and 1M rows
    python benchmarks/batch_predict.py --quick         # 8,192 texts; tables of 10k and 100k rows
    python benchmarks/batch_predict.py --part predict  # only part 1 (or --part memory)
    python benchmarks/batch_predict.py --rows 8192 --sizes 100000,1000000 --finetune-sizes 10000,100000

Needs the parquet extra (pyarrow) and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this clone's gptclf, not an installed one
from common import SMS_FILE, make_home, make_run, print_table, require_shared, run_child

from gptclf.inference.jobs import FAULT_ENV, JOURNAL, work_dir
from gptclf.inference.predict import CHUNK_SIZE

TINY = "n_layer=2,n_head=2,n_embd=64,n_positions=64"
WORDS = {
    "billing": ["invoice", "refund", "charge", "payment", "card", "bill"],
    "tech": ["crash", "error", "login", "install", "update", "bug"],
    "sales": ["quote", "discount", "plan", "upgrade", "trial", "price"],
}
FILLER = ["the", "my", "please", "today", "account", "help", "again", "thanks", "why", "still", "when", "can"]


def sms_texts(n: int, seed: int) -> list[str]:
    texts = [
        line.split("\t", 1)[1] for line in SMS_FILE.read_text(encoding="utf-8").splitlines() if "\t" in line
    ]
    rng = random.Random(seed)
    return [rng.choice(texts) for _ in range(n)]


def write_inputs(work: Path, texts: list[str]) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path, parquet_path = work / "texts.csv", work / "texts.parquet"
    import csv

    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "text"])
        writer.writerows([i, t] for i, t in enumerate(texts))
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, parquet_path, row_group_size=8192)
    return csv_path, parquet_path


def compare(a: Path, b: Path) -> str:
    """How two JSONL outputs agree: byte for byte, or labels and the largest probability gap (the
    ids of a CSV are strings, of Parquet numbers; threads change a sum's last bits)."""
    if a.read_bytes() == b.read_bytes():
        return "identical"
    ra = [json.loads(line) for line in a.read_text(encoding="utf-8").splitlines()]
    rb = [json.loads(line) for line in b.read_text(encoding="utf-8").splitlines()]
    labels = sum(x["label"] == y["label"] for x, y in zip(ra, rb, strict=True))
    gap = max(abs(x["probs"][c] - y["probs"][c]) for x, y in zip(ra, rb, strict=True) for c in x["probs"])
    return f"labels {labels / len(ra):.2%} equal, max |dp| {gap:.0e}"


def predict_cmd(run: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "predict", str(run), "--input", str(source),
        "--text-column", "text", "--output", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def torchrun_cmd(run: Path, source: Path, out: Path) -> list[str]:
    program = predict_cmd(run, source, out)[3:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return [*launcher, "-m", "--", "cli.main", *program]


def killed_and_resumed(
    run: Path, source: Path, out: Path, rows: int, env: dict[str, str]
) -> tuple[float, int, float]:
    """Kill the job while it writes the chunk after half of them, then ``--resume``: (seconds of
    both, texts classified by both, the killed one's peak RSS)."""
    chunks = -(-rows // CHUNK_SIZE)
    half = max(1, chunks // 2)
    full_env = {**os.environ, **env, FAULT_ENV: f"written:{half + 1}"}
    t0 = time.perf_counter()
    proc = subprocess.run(predict_cmd(run, source, out), env=full_env, capture_output=True, text=True)
    if proc.returncode != -9:
        raise SystemExit(f"the job was to be killed, it exited {proc.returncode}: {proc.stderr[-2000:]}")
    killed_seconds = time.perf_counter() - t0
    kept = json.loads((work_dir(out) / JOURNAL).read_text())["rows"]
    classified = min(rows, (half + 1) * CHUNK_SIZE)  # the chunk being written was classified, then lost
    seconds, peak = peak_of(predict_cmd(run, source, out, "--resume"), env)
    return killed_seconds + seconds, classified + (rows - kept), peak


def part_predict(work: Path, rows: int, seed: int) -> None:
    require_shared()
    home = make_home(work)
    env = {"GPTCLF_HOME": str(home)}
    run = work / "run"
    make_run(run, "gpt2-small", seed, max_length=128)
    csv_path, parquet_path = write_inputs(work, sms_texts(rows, seed))
    results: list[list[str]] = []
    reference = work / "csv.jsonl"

    def row(name: str, seconds: float, rss: float, texts: int, note: str) -> None:
        results.append(
            [name, f"{texts:,}", f"{seconds:,.1f}", f"{texts / seconds:,.1f}", f"{rss:,.0f}", note]
        )

    base, peak = peak_of(predict_cmd(run, csv_path, reference), env)
    row("CSV input", base, peak, rows, "")
    out = work / "parquet.jsonl"
    seconds, peak = peak_of(predict_cmd(run, parquet_path, out), env)
    row("Parquet input", seconds, peak, rows, f"{base / seconds:.2f}x CSV; {compare(reference, out)}")
    out = work / "ranks.jsonl"
    seconds, peak = peak_of(torchrun_cmd(run, csv_path, out), {**env, "OMP_NUM_THREADS": "1"})
    row(
        "torchrun, 2 ranks (largest process)", seconds, peak, rows,
        f"{base / seconds:.2f}x one process; {compare(reference, out)}",
    )  # fmt: skip
    out = work / "resumed.jsonl"
    seconds, classified, rss = killed_and_resumed(run, csv_path, out, rows, env)
    extra = classified - rows
    row(
        "killed at 50%, resumed", seconds, rss, classified,
        f"{extra:,} texts ({extra / CHUNK_SIZE:.1f} chunks) more than one run; {compare(reference, out)}",
    )  # fmt: skip
    where = f"{rows:,} SMS texts, CPU, {os.cpu_count()} cores"
    print(f"\npredict, gpt2-small (random weights, max length 128), {where}\n")
    print_table(["run", "texts classified", "seconds", "texts/s", "peak RSS MB", "compared"], results)


def generated_table(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    classes = list(WORDS)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("text,label\n")
        for _ in range(rows):
            label = rng.choice(classes)
            words = [rng.choice(FILLER) for _ in range(rng.randint(8, 24))]
            for _ in range(rng.randint(1, 3)):  # class words, one in ten from another class (noise)
                source = label if rng.random() > 0.1 else rng.choice(classes)
                words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS[source]))
            fh.write(" ".join(words) + f",{label}\n")


#: Runs argv[1:] and prints its peak RSS in KB: a small parent of its own, because a child's
#: ru_maxrss starts at its parent's RSS when it forks (this script holds a model and much more).
_PEAK = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def peak_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ``cmd`` alone, measured from a small parent."""
    child = run_child([sys.executable, "-c", _PEAK, *cmd], env=env)
    return child.seconds, int(child.stdout.split()[-1]) / 1024.0


def part_memory(work: Path, sizes: list[int], seed: int, finetune_sizes: list[int]) -> None:
    require_shared()
    home = make_home(work)
    env = {"GPTCLF_HOME": str(home)}
    run = work / "tiny-run"
    make_run(run, TINY, seed, classes=tuple(sorted(WORDS)))
    results = []
    for n in sizes:
        table = work / f"table-{n}.csv"
        generated_table(table, n, seed)
        data = work / f"data-{n}"
        gptclf = [sys.executable, "-m", "cli.main"]
        finetune = [
            *gptclf, "finetune", "--data", str(data), "--model", TINY, "--weights", "random",
            "--device", "cpu", "--epochs", "1", "--out", str(work / f"ft-{n}"), "--force",
        ]  # fmt: skip
        steps = {
            "prepare": [*gptclf, "prepare", "--input", str(table), "--out", str(data), "--force"],
            "evaluate --input": [*gptclf, "evaluate", str(run), "--input", str(table), "--device", "cpu"],
            "evaluate --split train": [
                *gptclf, "evaluate", str(run), "--data", str(data), "--split", "train", "--device", "cpu",
            ],
            "finetune (1 epoch, head)": [*finetune, "--trainable", "head"],
            "finetune (1 epoch, last block)": [*finetune, "--trainable", "last-block"],
            "finetune (1 epoch, last block, cache in RAM)": [
                *finetune, "--trainable", "last-block", "--cache-memory", "64GB",
            ],
        }  # fmt: skip
        for name, cmd in steps.items():
            if name.startswith("finetune") and n not in finetune_sizes:
                continue
            seconds, peak = peak_of(cmd, env)
            results.append([name, f"{n:,}", f"{seconds:,.1f}", f"{peak:,.0f}"])
    print(f"\nmemory on generated 3-class tables, tiny model ({TINY}), CPU\n")
    print_table(["verb", "rows", "seconds", "peak RSS MB"], results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8,192 texts; tables of 10k and 100k rows")
    parser.add_argument("--rows", type=int, default=None, help="texts to predict (default 100,000)")
    parser.add_argument("--sizes", default=None, help="table sizes for part 2, comma-separated")
    parser.add_argument("--part", choices=("all", "predict", "memory"), default="all")
    parser.add_argument(
        "--finetune-sizes", default=None, help="the sizes finetune runs at (default: --sizes)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = args.rows or (8 * CHUNK_SIZE if args.quick else 100_000)
    sizes = [int(s) for s in (args.sizes or ("10000,100000" if args.quick else "100000,1000000")).split(",")]
    with tempfile.TemporaryDirectory(prefix="gptclf-batch-") as tmp:
        work = Path(tmp)
        if args.part in ("all", "predict"):
            part_predict(work, rows, args.seed)
        if args.part in ("all", "memory"):
            tuned = [int(s) for s in args.finetune_sizes.split(",")] if args.finetune_sizes else sizes
            part_memory(work, sorted(set(sizes) | set(tuned)), args.seed, tuned)


if __name__ == "__main__":
    main()
