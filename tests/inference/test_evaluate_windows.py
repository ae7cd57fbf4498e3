"""The progress of ``evaluate`` and of the predictor, on texts read in windows, counts texts: a text
is done once its last window is, however many windows (and pieces of windows) it takes."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from gptclf.data.prepare import prepare
from gptclf.inference.predict import Predictor, compute_logits
from gptclf.rundir import load_run
from tests.finetune_helpers import FILLER, KEYWORDS, TINY_SPEC, install_tokenizer
from tests.inference.test_loop_windows import Recorder

#: Every text is 21-40 words, so 16 tokens take it 3-5 windows (stride 8).
MAX_LENGTH = 16


def window_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(
            [rng.choice(FILLER) for _ in range(rng.randrange(20, 40))] + [KEYWORDS[("ham", "spam")[i % 2]]]
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def window_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """(a run trained with ``--long-texts window --max-length 16``, the sizes of its splits)."""
    root = tmp_path_factory.mktemp("windows")
    texts = window_texts(60, 0)
    source = root / "source.csv"
    pd.DataFrame({"text": texts, "label": [("ham", "spam")[i % 2] for i in range(60)]}).to_csv(
        source, index=False
    )
    install_tokenizer()
    prepare(root / "prepared", input_path=source, classes=["ham", "spam"], split="0.5,0.25,0.25", seed=0)
    out = root / "run"
    result = CliRunner().invoke(
        app,
        ["finetune", "--data", str(root / "prepared"), "--out", str(out), "--model", TINY_SPEC,
         "--weights", "random", "--device", "cpu", "--epochs", "1", "--long-texts", "window",
         "--max-length", str(MAX_LENGTH)],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return out, load_run(out).info["data"]["sizes"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_evaluate_counts_the_texts_of_its_windows(
    window_run: tuple[Path, dict[str, int]], extra: list[str]
) -> None:
    run, sizes = window_run
    result = CliRunner().invoke(app, ["evaluate", str(run), "--device", "cpu", *extra])
    assert result.exit_code == 0, result.stderr
    err = " ".join(result.stderr.split())
    windows = re.search(
        r"(\d+) of (\d+) texts were longer than 16 tokens and were read in (\d+) windows", err
    )
    assert windows is not None, err
    n = sizes["test"]
    assert int(windows.group(1)) == int(windows.group(2)) == n and int(windows.group(3)) > 2 * n
    assert f"classifying ({n} texts)" in err, err
    assert f"classifying ({windows.group(3)} texts)" not in err


@pytest.mark.slow
def test_the_predictor_counts_texts_in_one_step_however_many_pieces(
    window_run: tuple[Path, dict[str, int]],
) -> None:
    run, _ = window_run
    loaded = load_run(run)
    texts = window_texts(9, 1)
    progress = Recorder()
    whole = Predictor(loaded, device="cpu", precision="fp32")  # the run's own --long-texts window
    assert whole.long_texts.mode == "window"
    logits = whole.logits(texts, progress=progress)
    assert whole.n_windows > 2 * len(texts)
    assert progress.steps == [("classifying", len(texts), "texts")]
    assert sum(progress.advanced) == len(texts)
    # Pieces of 4 windows: most texts run over two pieces, and each is still counted once.
    pieces = Recorder()
    again, counts = compute_logits(
        loaded.model, loaded.tokenizer, texts, max_length=MAX_LENGTH, batch_size=2, device=whole.device,
        precision=whole.precision, progress=pieces, long=whole.long_texts, piece=4,
    )  # fmt: skip
    assert counts.windows == whole.n_windows
    assert pieces.steps == [("classifying", len(texts), "texts")]
    assert sum(pieces.advanced) == len(texts) and min(pieces.advanced) >= 0
    assert torch.allclose(again, logits, atol=1e-5)
