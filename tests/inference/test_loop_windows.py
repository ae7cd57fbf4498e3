"""The progress of an evaluation read in windows counts texts, not windows (finetune's evaluation of
the kept weights on the test and validation splits, before they are calibrated)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.data.long_texts import LongTexts
from gptclf.device import resolve_precision
from gptclf.inference.batching import TokenSource
from gptclf.inference.longtexts import WindowedSource, windows_of
from gptclf.inference.loop import batched_logits
from gptclf.progress import Progress
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder
from tests.inference.test_predict import tiny_classifier

CPU = torch.device("cpu")


class Recorder(Progress):
    """Keeps the total each step began with and what it advanced by."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int | None, str]] = []
        self.advanced: list[int] = []

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        self.steps.append((label, total, unit))

    def advance(self, n: int = 1, **fields: object) -> None:
        self.advanced.append(n)


def test_windows_are_counted_as_the_texts_they_belong_to() -> None:
    texts = [[1000 + (i * 7 + j) % 90 for j in range(n)] for i, n in enumerate((40, 3, 25, 8, 60, 1))]
    made = windows_of(texts, 8, LongTexts("window").resolved(8))
    assert len(made.ids) > 3 * len(texts)  # many windows per text
    progress = Recorder()
    batched_logits(
        tiny_classifier(["a", "b"]), WindowedSource(TokenSource(made.ids), made.map), batch_size=2,
        device=CPU, precision=resolve_precision("fp32", CPU), progress=progress, label="eval",
    )  # fmt: skip
    assert progress.steps == [("eval", len(texts), "texts")]
    assert sum(progress.advanced) == len(texts) and min(progress.advanced) >= 0
    # Without windows each row is a text, as before.
    plain = Recorder()
    batched_logits(
        tiny_classifier(["a", "b"]), TokenSource(texts), batch_size=2, device=CPU,
        precision=resolve_precision("fp32", CPU), progress=plain, label="eval",
    )  # fmt: skip
    assert plain.steps == [("eval", len(texts), "texts")] and sum(plain.advanced) == len(texts)


@pytest.mark.slow
def test_finetune_evaluation_progress_counts_the_splits_texts(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["ham", "spam"], n=80)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["finetune", "--data", str(data), "--out", str(out), "--model", TINY_SPEC, "--weights", "random",
         "--device", "cpu", "--epochs", "1", "--long-texts", "window", "--max-length", "4", "--stride", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    err = " ".join(result.stderr.split())
    sizes = json.loads((out / "run.json").read_text())["data"]["sizes"]
    for split in ("test", "validation"):
        windows = re.search(rf"{split} split: \d+ of \d+ texts were longer .* read in (\d+) windows", err)
        assert windows is not None and int(windows.group(1)) > sizes[split], err  # windows outnumber texts
        assert f"evaluating the kept weights on the {split} split ({sizes[split]} texts)" in err, err
    # The frozen-trunk cache is built over windows too, and says how many texts they hold.
    assert f"caching the frozen blocks of the train split ({sizes['train']} texts)" in err, err
