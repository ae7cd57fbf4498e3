"""What the benchmarks share: locating ../shared, running a child with its own peak RSS, tables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GPTCLF_SHARED", REPO.parent / "shared"))
SMS_FILE = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
BPE_DIR = SHARED / "data" / "gpt2_bpe"


def require_shared() -> None:
    """Stop with a clear message when the real data is not beside the repo."""
    if not SMS_FILE.is_file() or not (BPE_DIR / "encoder.json").is_file():
        sys.exit(f"benchmark needs the real data in {SHARED}/data (set GPTCLF_SHARED to its folder)")


def gptclf_exe() -> str:
    """The console script of the environment running this benchmark."""
    exe = Path(sys.executable).parent / "gptclf"
    return str(exe) if exe.exists() else shutil.which("gptclf") or "gptclf"


def make_home(work: Path) -> Path:
    """A private GPTCLF_HOME holding the tokenizer files (so nothing is downloaded)."""
    home = work / "home"
    (home / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(BPE_DIR / name, home / "tokenizer" / name)
    return home


@dataclass
class ChildResult:
    """A finished child process: exit code, wall seconds, its own peak RSS, captured stdout."""

    returncode: int
    seconds: float
    peak_rss_mb: float
    stdout: str


def run_child(
    cmd: list[str], env: dict[str, str] | None = None, stdout_path: Path | None = None
) -> ChildResult:
    """Run ``cmd`` and measure it alone: ``os.wait4`` gives this child's own peak RSS."""
    full_env = {**os.environ, **(env or {})}
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8") as err,
        tempfile.TemporaryFile("w+", encoding="utf-8") as tmp_out,
    ):
        out = open(stdout_path, "w", encoding="utf-8") if stdout_path else tmp_out  # noqa: SIM115
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=err, text=True)
        # os.wait4 (not Popen.wait) so that the rusage is this child's own, not all children's.
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if stdout_path:
            out.close()
        tmp_out.seek(0)
        captured = tmp_out.read()
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read()[-4000:])
            raise SystemExit(f"benchmark step failed (exit {proc.returncode}): {' '.join(cmd)}")
    return ChildResult(proc.returncode, seconds, usage.ru_maxrss / 1024.0, captured)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A Markdown table on stdout (pastes into the README as it is)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def run_finetune(
    data: Path, classes: str, home: Path, out: Path, seed: int, flags: list[str]
) -> tuple[dict[str, object], ChildResult]:
    """``gptclf finetune --json`` on CPU with random weights in its own process: (summary, child)."""
    cmd = [
        sys.executable, "-m", "cli.main", "finetune", "--data", str(data), "--classes", classes,
        "--weights", "random", "--seed", str(seed), "--device", "cpu", "--out", str(out), "--json", *flags,
    ]  # fmt: skip
    child = run_child(cmd, env={"GPTCLF_HOME": str(home)})
    return json.loads(child.stdout), child


def make_run(
    run_dir: Path,
    model_spec: str,
    seed: int,
    max_length: int | None = None,
    calibration: dict[str, object] | None = None,
    classes: tuple[str, ...] = ("ham", "spam"),
) -> None:
    """A run directory with random weights and a head of ``classes`` (speed and memory do not depend
    on what weights learnt); ``max_length`` defaults to the model's context."""
    from gptclf.model.classifier import Classifier, TrainableScope, replace_head
    from gptclf.model.config import resolve_model
    from gptclf.model.gpt import build_model
    from gptclf.rundir import build_run_info, save_run

    name, cfg = resolve_model(model_spec)
    gpt = build_model(cfg, seed=seed)
    replace_head(gpt, len(classes), seed=seed)
    info = build_run_info(
        model_name=name, config=cfg, classes=list(classes), max_length=max_length or cfg.n_positions,
        pooling="last-token", trainable=TrainableScope().to_dict(), trainable_params=0, train={},
        seed=seed, weights="random", calibration=calibration,
    )  # fmt: skip
    save_run(run_dir, Classifier(gpt, list(classes), "last-token"), info, BPE_DIR)
