from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gptclf.data.prepared import read_prepared
from gptclf.errors import BadInputError
from gptclf.inference.batching import LabelledSet, TokenSource
from gptclf.inference.loop import labelled_metrics
from gptclf.inference.plots import plot_names
from gptclf.progress import TrainProgress
from gptclf.rundir import HISTORY_COLUMNS, check_out, history_csv, load_run, write_curves
from gptclf.rundir.layout import CHECKPOINT_NAME
from gptclf.training.checkpoints import save_checkpoint
from gptclf.training.finetune import finetune
from gptclf.training.plan import make_plan, resumed_settings
from gptclf.training.settings import build_settings
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder

CPU = torch.device("cpu")


@pytest.fixture
def data3(tmp_path: Path) -> Path:
    install_tokenizer()
    return prepared_folder(tmp_path, ["spam", "ham", "other"], n=150)


def settings(data: Path, out: Path, **kw: Any) -> Any:
    base = {"data": str(data), "out": str(out), "model": TINY_SPEC, "weights": "random", "device": "cpu"}
    return build_settings({**base, "trainable": "all", "lr": 2e-3, "epochs": 2, **kw})


@pytest.mark.slow
def test_a_run_directory_describes_itself(data3: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = finetune(settings(data3, out, classes=["other", "spam", "ham"], eval_every=5))
    names = {p.name for p in out.iterdir()}
    expected = {"model.safetensors", "run.json", "encoder.json", "vocab.bpe", "metrics.json", "history.csv"}
    if importlib.util.find_spec("matplotlib") is not None:
        expected |= {"curves.png", *plot_names(3)}  # the test split's pictures beside the curves
    assert names == expected
    info = json.loads((out / "run.json").read_text())
    assert info["classes"] == ["other", "spam", "ham"]  # the order given, not the prepared one
    assert info["data"]["dir"] == str(data3.resolve()) and len(info["data"]["fingerprint"]) == 64
    prepared = read_prepared(data3)
    assert info["data"]["sizes"] == {name: len(frame) for name, frame in prepared.splits.items()}
    assert (
        info["train"]["epochs"] == 2
        and info["train"]["eval_every"] == 5
        and info["train"]["precision"] == "fp32"
    )
    assert info["trainable"]["kind"] == "all" and info["weights"] == "random" and info["seed"] == 123
    assert info["max_length"] == 64 and info["model"]["config"]["n_layer"] == 2
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert (
        [int(r["step"]) for r in rows]
        == [r["step"] for r in result.history.rows]
        == [5, 10, 14, 15, 20, 25, 28]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == result.test["accuracy"] and metrics["best"] == result.history.best
    # The saved run predicts exactly what the trained model did in memory.
    run = load_run(out)
    texts = prepared.splits["test"]["text"].tolist()
    ids = [run.tokenizer.encode_ordinary(t) for t in texts]
    labels = [run.classes.index(x) for x in prepared.splits["test"]["label"]]
    test_set = LabelledSet(TokenSource(ids), labels)
    fp32 = make_plan(settings(data3, out)).precision
    _, loaded_logits = labelled_metrics(run.model, test_set, device=CPU, precision=fp32)
    _, live_logits = labelled_metrics(result.model, test_set, device=CPU, precision=fp32)
    assert torch.equal(torch.from_numpy(loaded_logits), torch.from_numpy(live_logits))


@pytest.mark.slow
def test_book_faithful_mode(data3: Path, tmp_path: Path) -> None:
    book = {"pooling": "last-position", "pad_to": "longest-train", "cache": False}
    s = settings(data3, tmp_path / "run", trainable="last-block", epochs=1, **book)
    result = finetune(s)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    longest = info["train"]["pad_length"]
    assert info["max_length"] == longest < 64 and info["train"]["bucket"] is False
    assert info["pooling"] == "last-position" and result.cache["blocks"] == 0


def test_the_head_scope_caches_one_state_a_text(data3: Path, tmp_path: Path) -> None:
    """``--trainable head``: the last real token's state of each text, not every token's."""
    result = finetune(settings(data3, tmp_path / "run", trainable="head", epochs=1))
    splits = read_prepared(data3).splits
    texts = len(splits["train"]) + len(splits["validation"])  # the test split is read from its tokens
    assert result.cache["blocks"] == 2 and result.cache["bytes"] == texts * 32 * 4  # n_embd fp32


@pytest.mark.slow
def test_the_default_scope_uses_the_cache(data3: Path, tmp_path: Path) -> None:
    result = finetune(settings(data3, tmp_path / "run", trainable="last-block", epochs=1, cache_memory="0"))
    assert result.cache["blocks"] == 1 and result.cache["location"] == "disk"
    assert result.summary()["cache"]["bytes"] > 0 and set(result.timings) >= {"tokenise", "cache", "train"}


def test_problems_are_reported_together(tmp_path: Path) -> None:
    bad = {"model": "gpt2-tiny", "trainable": "most", "pooling": "max", "epochs": 0, "precision": "fp16"}
    s = build_settings({**bad, "device": "cpu", "data": str(tmp_path / "none")})
    with pytest.raises(BadInputError) as info:
        make_plan(s)
    message = str(info.value)
    for part in ("unknown model", "unknown trainable scope", "unknown pooling", "--epochs", "fp16", "--data"):
        assert part in message


def test_settings_that_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no pretrained weights for a custom"):
        make_plan(build_settings({"model": TINY_SPEC}))
    with pytest.raises(BadInputError, match=r"--max-length must be in 1\.\.64"):
        make_plan(build_settings({"model": TINY_SPEC, "weights": "random", "max_length": 65}))
    with pytest.raises(BadInputError, match="more blocks than the model has"):
        make_plan(build_settings({"model": TINY_SPEC, "weights": "random", "trainable": "last-blocks 3"}))
    lora = {"model": TINY_SPEC, "weights": "random", "trainable": "lora"}
    with pytest.raises(BadInputError, match=r"--lora-rank 33 is over the model's width \(32\): give at most"):
        make_plan(build_settings({**lora, "lora_rank": 33}))
    make_plan(build_settings({**lora, "lora_rank": 32}))
    with pytest.raises(BadInputError, match="over the model's width"):  # not an allocation's traceback
        make_plan(build_settings({**lora, "lora_rank": 99999999999999999}))
    with pytest.raises(BadInputError, match="classes are spam and ham"):
        make_plan(build_settings({"classes": "pos,neg"}))
    with pytest.raises(BadInputError, match="not a size"):
        make_plan(build_settings({"cache_memory": "plenty"}))


def test_classes_must_match_the_prepared_data(data3: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not match the classes"):
        finetune(settings(data3, tmp_path / "run", classes=["spam", "ham"]))
    assert not (tmp_path / "run").exists()


def test_out_dir_rules(tmp_path: Path) -> None:
    check_out(tmp_path / "new", force=False, resume=False)
    check_out(tmp_path, force=False, resume=False)  # empty
    (tmp_path / "x").write_text("x")
    with pytest.raises(BadInputError, match="not empty"):
        check_out(tmp_path, force=False, resume=False)
    check_out(tmp_path, force=True, resume=False)
    with pytest.raises(BadInputError, match="is a file"):
        check_out(tmp_path / "x", force=True, resume=False)


def test_resume_keeps_what_the_run_computes(tmp_path: Path) -> None:
    saved = build_settings({"epochs": 3, "data": str(tmp_path)}).to_dict()
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"extra": {"settings": saved}})
    s, _ = resumed_settings(
        tmp_path, build_settings({"resume": True, "device": "cpu", "data": str(tmp_path)})
    )
    assert (s.train.epochs, s.device, s.resume) == (3, "cpu", True)
    with pytest.raises(
        BadInputError, match=r"cannot change these on --resume: --epochs 4 \(the run used 3\)"
    ):
        resumed_settings(tmp_path, build_settings({"resume": True, "epochs": 4}))
    with pytest.raises(BadInputError, match="nothing to resume"):
        resumed_settings(tmp_path / "other", build_settings({"resume": True}))


def test_history_csv_and_curves_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"epoch": 1, "step": 3, "train_loss": 0.5, "train_acc": None, "val_loss": 0.25, "val_acc": 1.0,
             "val_f1": 1.0, "lr": 1e-3, "elapsed": 2.0}]  # fmt: skip
    assert history_csv(rows).splitlines() == [",".join(HISTORY_COLUMNS), "1,3,0.5,,0.25,1.0,1.0,0.001,2.0"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert write_curves(tmp_path, rows, 3) is False and not list(tmp_path.iterdir())


def test_finetune_says_when_curves_are_skipped_for_want_of_matplotlib(
    data3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    said = Said()
    finetune(settings(data3, tmp_path / "run", epochs=1), progress=said)
    assert any(m.startswith("curves.png skipped: matplotlib is not installed") for m in said.lines)
    assert not (tmp_path / "run" / "curves.png").exists()


def test_a_damaged_checkpoint_is_one_line(tmp_path: Path) -> None:
    import datetime

    from gptclf.training.checkpoints import load_checkpoint

    bad = tmp_path / CHECKPOINT_NAME
    # Not a tensor state: torch's weights_only loader refuses it with a many-line explanation.
    torch.save({"version": 1, "when": datetime.date(2026, 1, 1)}, bad)
    for content in (None, b"PK\x03\x04 not really a zip file"):
        if content is not None:
            bad.write_bytes(content)
        with pytest.raises(BadInputError) as info:
            load_checkpoint(bad)
        message = str(info.value)
        assert "\n" not in message and "is not a readable gptclf checkpoint" in message
        assert "--force" in message


class Said(TrainProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.slow
@pytest.mark.parametrize("trainable", ["last-block", "all"], ids=["cached test split", "no cache"])
def test_finetunes_test_metrics_equal_gptclf_evaluate_exactly(
    data3: Path, tmp_path: Path, trainable: str
) -> None:
    """One inference loop: the metrics finetune reports are those `gptclf evaluate` computes."""
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "run"
    result = finetune(settings(data3, out, trainable=trainable, epochs=1))
    assert (result.cache["blocks"] > 0) is (trainable == "last-block")
    args = ["evaluate", str(out), "--split", "test", "--json", "--device", "cpu"]
    evaluated = CliRunner().invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert result.test is not None
    for key in ("n", "accuracy", "loss", "macro_f1", "per_class", "confusion_matrix", "roc_auc"):
        assert metrics[key] == result.test[key], key
