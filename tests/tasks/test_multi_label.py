"""The multi-label task: the loss, its positive weights, per-label thresholds, its finetune checks,
and fit() with
K sigmoid outputs through every trainable scope, pooling, the cache, AMP and resume."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from gptclf.device import resolve_precision
from gptclf.distributed import Shard, process_group
from gptclf.errors import Interrupted
from gptclf.inference.batching import LabelledSet
from gptclf.inference.cache import make_sources
from gptclf.model.classifier import parse_scope
from gptclf.option_groups import TargetOptions
from gptclf.tasks.label_sets import (
    DEFAULT_THRESHOLD,
    bce_sum,
    choose_thresholds,
    exact_matches,
    pos_weights,
    sigmoid,
    stored_thresholds,
)
from gptclf.tasks.multi_label import MultiLabel, threshold_lines
from gptclf.tasks.single_label import SingleLabel
from gptclf.training.checkpoints import load_checkpoint
from gptclf.training.loop import fit
from gptclf.training.settings import TrainConfig
from tests.finetune_helpers import max_diff, tiny_classifier, trainable_state
from tests.training.test_loop import KillAt

CPU = torch.device("cpu")
MULTI = MultiLabel()
FP32 = resolve_precision("fp32", CPU)
CLASSES = ["a", "b", "c"]
CFG = TrainConfig(epochs=2, lr=2e-3, batch_size=8, eval_every=4)


def test_the_loss_is_torchs_mean_bce_and_pos_weight_is_negatives_over_positives() -> None:
    logits = torch.randn(6, 3)
    target = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.float32
    )
    assert float(bce_sum(logits, target)) == pytest.approx(
        6 * float(F.binary_cross_entropy_with_logits(logits, target))
    )
    w = pos_weights(target.tolist(), "balanced")
    assert w is not None and w.tolist() == pytest.approx([2 / 4, 5 / 1, 5 / 1])
    assert pos_weights(target.tolist(), "none") is None
    weighted = bce_sum(logits, target, w)
    assert float(weighted) == pytest.approx(
        6 * float(F.binary_cross_entropy_with_logits(logits, target, pos_weight=w))
    )
    assert int(exact_matches(torch.where(target > 0, 5.0, -5.0), target)) == 6


def test_threshold_search_beats_one_half_on_an_imbalanced_label() -> None:
    rng = np.random.default_rng(0)
    n = 200
    truth = np.zeros((n, 2), dtype=int)
    truth[:, 0] = rng.random(n) < 0.08  # rare, and the model is shy of it: probabilities below 0.5
    truth[:, 1] = rng.random(n) < 0.5
    logits = np.stack([rng.normal(-3, 0.5, n) + 2.0 * truth[:, 0], rng.normal(0, 1, n) + 2 * truth[:, 1]], 1)
    chosen = choose_thresholds(logits, truth, ["rare", "common"])
    t = chosen["rare"]["threshold"]
    probs = sigmoid(logits[:, 0])

    def f1(threshold: float) -> float:
        pred = probs >= threshold
        tp = (pred & (truth[:, 0] == 1)).sum()
        return 2 * tp / (pred.sum() + truth[:, 0].sum())

    assert f1(0.5) < 0.2 and f1(t) > f1(0.5) + 0.3 and chosen["rare"]["chosen"]
    assert chosen["rare"]["validation"]["f1"] == pytest.approx(f1(t), abs=1e-6)


def test_too_few_positives_keep_one_half() -> None:
    truth = np.array([[1, 0], [0, 0], [0, 1], [0, 0], [0, 1], [0, 1]])
    chosen = choose_thresholds(np.zeros((6, 2)), truth, ["x", "y"])
    assert chosen["x"]["threshold"] == DEFAULT_THRESHOLD and not chosen["x"]["chosen"]
    assert chosen["y"]["chosen"]
    info = {"classes": ["x", "y"], "thresholds": {"x": {"threshold": 0.3}}}
    assert stored_thresholds(info) == [0.3, 0.5]


def _data(
    model: object, scope: str = "last-block", cache: bool = False, n: int = 48
) -> tuple[LabelledSet, LabelledSet]:
    """Texts of random tokens where token 500 + k marks label k (any number of them)."""
    rng = np.random.default_rng(1)
    out = []
    for count in (n, 16):
        ids, labels = [], []
        for _ in range(count):
            y = (rng.random(3) < 0.4).astype(int)
            seq = [int(t) for t in rng.integers(1000, 1100, size=rng.integers(2, 12))]
            for k in np.flatnonzero(y):
                seq.insert(int(rng.integers(0, len(seq) + 1)), 500 + int(k))
            ids.append(seq)
            labels.append(y.tolist())
        out.append((ids, labels))
    sources = make_sources(
        model, {"train": out[0][0], "val": out[1][0]}, scope=parse_scope(scope), use_cache=cache,  # type: ignore[arg-type]
        device=CPU, precision=FP32, cache_memory=1 << 30, batch_size=8,
    )  # fmt: skip
    train = LabelledSet(sources["train"], out[0][1], task=MULTI)
    return train, LabelledSet(sources["val"], out[1][1], task=MULTI)


@pytest.mark.parametrize(
    ("scope", "pooling", "cache", "monitor"),
    [("head", "last-token", True, "val_micro_f1"), ("last-block", "mean", True, "val_loss"),
     ("all", "last-position", False, "val_micro_f1"), ("lora", "last-token", False, "val_loss")],
)  # fmt: skip
def test_fit_trains_k_sigmoid_outputs(scope: str, pooling: str, cache: bool, monitor: str) -> None:
    model = tiny_classifier(CLASSES, scope=scope, pooling=pooling, seed=3)
    train, val = _data(model, scope, cache)
    before = trainable_state(model)
    history = fit(
        model, train, val, dataclasses.replace(CFG, monitor=monitor), device=CPU, precision=FP32, seed=3
    )
    assert max_diff(before, trainable_state(model)) > 0
    row = history.rows[-1]
    assert 0 <= row["val_micro_f1"] <= 1 and np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    assert history.best is not None and "val_micro_f1" in history.best


def test_class_weights_and_bf16_autocast_train() -> None:
    model = tiny_classifier(CLASSES, scope="all", seed=3)
    train, val = _data(model)
    cfg = dataclasses.replace(CFG, class_weights="balanced")
    history = fit(model, train, val, cfg, device=CPU, precision=resolve_precision("bf16", CPU), seed=3)
    assert np.isfinite(history.rows[-1]["val_loss"])


def test_interrupt_and_resume_match_a_straight_run(tmp_path: Path) -> None:
    def run(**kwargs: object) -> torch.nn.Module:
        model = tiny_classifier(CLASSES, scope="all", seed=3)
        train, val = _data(model)
        fit(model, train, val, CFG, device=CPU, precision=FP32, seed=3, **kwargs)  # type: ignore[arg-type]
        return model

    straight = run()
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        run(checkpoint=ckpt, progress=KillAt(5, signal.SIGINT))
    resumed = run(checkpoint=ckpt, resume=load_checkpoint(ckpt))
    assert max_diff(trainable_state(resumed), trainable_state(straight)) == 0.0


def _ddp_train(batch_size: int, shard: Shard) -> tuple[dict[str, torch.Tensor], list[dict[str, object]]]:
    """The tiny multi-label classifier trained on cached states (the cache path under DDP too)."""
    model = tiny_classifier(CLASSES, seed=7)
    rng = np.random.default_rng(2)
    ids = [[int(t) for t in rng.integers(1000, 1100, size=rng.integers(2, 12))] for _ in range(43 + 17)]
    labels = (rng.random((60, 3)) < 0.4).astype(int).tolist()
    sources = make_sources(
        model, {"train": ids[:43], "val": ids[43:]}, scope=parse_scope("last-block"), use_cache=True,
        device=CPU, precision=FP32, cache_memory=1 << 30, batch_size=4, shard=shard,
    )  # fmt: skip
    cfg = TrainConfig(epochs=2, lr=5e-5, eval_every=3, batch_size=batch_size, class_weights="balanced")
    train = LabelledSet(sources["train"], labels[:43], task=MULTI)
    val = LabelledSet(sources["val"], labels[43:], task=MULTI)
    history = fit(model, train, val, cfg, device=CPU, precision=FP32, seed=7, shard=shard)
    return trainable_state(model), history.rows


def _ddp_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    with process_group("cpu", timeout=60) as shard:
        result = _ddp_train(3, shard)
    torch.save(result, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_train_like_one_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    single_state, single_rows = _ddp_train(6, Shard())
    for rank in range(2):
        state, rows = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert max_diff(state, single_state) < 1e-5
        for got, want in zip(rows, single_rows, strict=True):
            for key in ("train_loss", "val_loss", "val_micro_f1"):
                assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_two_class_rules_and_micro_f1_monitor_fit_only_their_kind_of_data() -> None:
    multi, single = MULTI, SingleLabel()
    assert multi.settings_problems(target=None, positive=None, monitor="val_micro_f1") == []
    problems = multi.settings_problems(target="f1", positive=None, monitor="val_loss")
    assert "--target and --positive" in problems[0]
    assert (
        "val_micro_f1 is for multi-label"
        in single.settings_problems(target=None, positive=None, monitor="val_micro_f1")[0]
    )
    assert single.settings_problems(target="f1", positive="spam", monitor="val_f1") == []


def test_thresholds_come_from_validation_and_the_scores_use_them() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((40, 2)) < 0.4).astype(int)
    logits = rng.normal(size=(40, 2)) + 2 * truth - 1.5  # probabilities mostly below 0.5
    data = {"validation": logits, "test": logits}
    labels = {"validation": truth.tolist(), "test": truth.tolist()}
    finished = MULTI.finish(data, labels, ["x", "y"], TargetOptions())
    choices, scores = finished.choices, finished.scores
    assert choices["multi_label"] is True and all(r["chosen"] for r in choices["thresholds"].values())
    assert scores["test"] is not None
    used = [scores["test"]["per_class"][n]["threshold"] for n in ("x", "y")]
    assert used == [choices["thresholds"][n]["threshold"] for n in ("x", "y")] and used != [0.5, 0.5]
    assert "threshold of x:" in threshold_lines(choices["thresholds"])[0]
    assert finished.lines == threshold_lines(choices["thresholds"])
    alone = MULTI.finish({"test": logits}, {"test": truth.tolist()}, ["x", "y"], TargetOptions())
    assert [r["threshold"] for r in alone.choices["thresholds"].values()] == [0.5, 0.5]
