from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from gptclf.device import Precision, resolve_precision
from gptclf.distributed import Shard
from gptclf.errors import BadInputError, Interrupted, TrainingError
from gptclf.inference.batching import Batch, LabelledSet, TokenSource
from gptclf.inference.cache import make_sources
from gptclf.inference.loop import labelled_metrics
from gptclf.model.classifier import Classifier, parse_scope
from gptclf.progress import TrainProgress
from gptclf.tasks.single_label import class_weights
from gptclf.training.checkpoints import InterruptGuard, load_checkpoint
from gptclf.training.loop import fit
from gptclf.training.settings import TrainConfig
from gptclf.training.step import stats_dtype
from tests.fault_helpers import entering_marks, outlast
from tests.finetune_helpers import max_diff, run_batch, synthetic_ids, tiny_classifier, trainable_state

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)
CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-3)
#: The book's learning rate: Adam's step is about lr in size whatever the gradient's, so float noise
#: in a near-zero gradient can move a weight by up to lr; comparisons within 1e-5 need a small lr.
EXACT = dataclasses.replace(CFG, lr=5e-5)


def data(
    model: Classifier, n_train: int = 43, n_val: int = 17, cache: bool = False, flip_val: bool = False
) -> tuple[LabelledSet, LabelledSet]:
    train_ids, train_labels = synthetic_ids(n_train, len(model.classes), seed=1)
    val_ids, val_labels = synthetic_ids(n_val, len(model.classes), seed=2)
    if flip_val:
        val_labels = [1 - y for y in val_labels]
    scope = "last-block" if any(p.requires_grad for p in model.gpt.transformer.h[-1].parameters()) else "all"
    sources = make_sources(
        model, {"train": train_ids, "val": val_ids}, scope=parse_scope(scope), use_cache=cache, device=CPU,
        precision=FP32, cache_memory=1 << 30,
    )  # fmt: skip
    return LabelledSet(sources["train"], train_labels), LabelledSet(sources["val"], val_labels)


def run(cfg: TrainConfig = CFG, cache: bool = False, seed: int = 7, **kw: Any) -> tuple[Classifier, Any]:
    model = tiny_classifier(["a", "b"], seed=seed)
    train, val = data(model, cache=cache, flip_val=kw.pop("flip_val", False))
    history = fit(model, train, val, cfg, device=CPU, precision=FP32, seed=seed, **kw)
    return model, history


def test_cache_gives_the_same_training_as_no_cache() -> None:
    cached, h1 = run(EXACT, cache=True)
    plain, h2 = run(EXACT, cache=False)
    assert max_diff(trainable_state(cached), trainable_state(plain)) < 1e-5
    for a, b in zip(h1.rows, h2.rows, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


@pytest.mark.parametrize("weights", ["none", "balanced"])
def test_gradient_accumulation_equals_one_large_batch(weights: str) -> None:
    """43 texts: groups of 8 and a last group of 3, which the accumulation must weight right."""
    big, _ = run(dataclasses.replace(EXACT, class_weights=weights))
    accumulated, _ = run(dataclasses.replace(EXACT, batch_size=4, grad_accum=2, class_weights=weights))
    assert max_diff(trainable_state(big), trainable_state(accumulated)) < 1e-5
    uneven, _ = run(dataclasses.replace(EXACT, batch_size=3, grad_accum=3, class_weights=weights))
    assert max_diff(trainable_state(uneven), trainable_state(big)) > 1e-4  # groups of 9: the test can fail


def test_early_stopping_keeps_the_best_weights() -> None:
    """Validation labels are the opposite of the training rule: learning makes validation worse."""
    cfg = dataclasses.replace(CFG, epochs=6, early_stop=2)
    stopped, history = run(cfg, flip_val=True)
    assert history.stopped_early and len(history.rows) == 3  # best at epoch 1, then two worse
    assert history.best == history.rows[0]
    after_one, _ = run(dataclasses.replace(CFG, epochs=1), flip_val=True)
    assert max_diff(trainable_state(stopped), trainable_state(after_one)) == 0.0


def test_monitor_accuracy_and_eval_every() -> None:
    cfg = dataclasses.replace(CFG, epochs=2, eval_every=2, monitor="val_acc")
    _, history = run(cfg)
    assert [r["step"] for r in history.rows] == [2, 4, 6, 8, 10, 12]  # 6 steps an epoch; ends count once
    assert {r["epoch"] for r in history.rows} == {1, 2}
    best_acc = max(r["val_acc"] for r in history.rows)
    assert history.best["val_acc"] == best_acc


class NanAfter:
    """A token source whose batches turn into NaN hidden states from the ``n``-th one on."""

    def __init__(self, source: TokenSource, n: int, model: Classifier) -> None:
        self.source, self.n, self.model, self.calls = source, n, model, 0
        self.lengths, self.start_block = source.lengths, 0

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        self.calls += 1
        batch = self.source.batch(indices, device)
        if self.calls < self.n:
            return batch
        hidden = self.model.gpt.embed(batch.input_ids) * float("nan")
        return Batch(None, hidden, batch.lengths, 0)

    def close(self) -> None:
        """Nothing to release."""


def test_nan_loss_stops_and_names_the_step(tmp_path: Path) -> None:
    model = tiny_classifier(["a", "b"], seed=7)
    train, val = data(model)
    train = LabelledSet(NanAfter(train.source, 5, model), train.labels)  # type: ignore[arg-type]
    before = trainable_state(model)
    with pytest.raises(TrainingError, match=r"became nan at step 3 \(epoch 1, batch 3 of 6\)"):
        cfg = dataclasses.replace(CFG, batch_size=4, grad_accum=2)
        fit(model, train, val, cfg, device=CPU, precision=FP32, seed=7, checkpoint=tmp_path / "ckpt.pt")
    assert not list(tmp_path.iterdir())  # no checkpoint, nothing else
    assert max_diff(before, trainable_state(model)) > 0  # two steps were taken before the NaN


class KillAt(TrainProgress):
    """Sends this process a real signal after optimizer step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.at, self.signum = step, signum

    def step(self, epoch: int, step: int, loss: float) -> None:
        if step == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(("signum", "code", "at"), [(signal.SIGINT, 130, 5), (signal.SIGTERM, 143, 6)])
@pytest.mark.slow
def test_interrupt_saves_a_checkpoint_and_resume_matches(
    tmp_path: Path, signum: int, code: int, at: int
) -> None:
    """Step 6 is an epoch end (43 texts, groups of 8): the resume starts the next epoch."""
    cfg = dataclasses.replace(CFG, epochs=3, eval_every=4)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    full, full_history = run(cfg)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted) as info:
        run(cfg, checkpoint=ckpt, progress=KillAt(at, signum), extra={"note": "kept"})
    assert info.value.exit_code == code and "--resume" in str(info.value)
    state = load_checkpoint(ckpt)
    assert state["loop"]["step"] == at and state["extra"] == {"note": "kept"}
    resumed, history = run(cfg, checkpoint=ckpt, resume=state)
    assert max_diff(trainable_state(resumed), trainable_state(full)) == 0.0
    strip = [{k: v for k, v in r.items() if k != "elapsed"} for r in history.rows]
    assert strip == [{k: v for k, v in r.items() if k != "elapsed"} for r in full_history.rows]
    # The handlers are put back as they were (SIG_IGN under nohup, Python's default otherwise).
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


@pytest.mark.slow
def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        run(CFG, checkpoint=ckpt, progress=KillAt(2, signal.SIGINT))
    with pytest.raises(BadInputError, match="other training settings"):
        run(dataclasses.replace(CFG, lr=0.5), resume=load_checkpoint(ckpt))


def test_without_validation_the_last_weights_stay() -> None:
    model = tiny_classifier(["a", "b"], seed=7)
    train, _ = data(model)
    history = fit(model, train, None, CFG, device=CPU, precision=FP32, seed=7)
    assert history.best is None and len(history.rows) == 2 and history.rows[0]["val_loss"] is None
    with pytest.raises(BadInputError, match="early-stop needs"):
        fit(model, train, None, dataclasses.replace(CFG, early_stop=1), device=CPU, precision=FP32, seed=7)


def test_cpu_bf16_autocast_trains() -> None:
    model = tiny_classifier(["a", "b"], seed=7)
    train, val = data(model)
    history = fit(model, train, val, CFG, device=CPU, precision=resolve_precision("bf16", CPU), seed=7)
    reference, _ = run(CFG)
    assert all(math.isfinite(r["train_loss"]) for r in history.rows)
    assert 0 < max_diff(trainable_state(model), trainable_state(reference)) < 0.05


def test_evaluate_returns_logits_in_input_order() -> None:
    model = tiny_classifier(["a", "b"], seed=7).eval()
    _, val = data(model)
    metrics, logits = labelled_metrics(model, val, device=CPU, precision=FP32, batch_size=4)
    with torch.no_grad():
        one_by_one = torch.cat([run_batch(model, val.source.batch([i], CPU)) for i in range(len(val))])
    assert torch.allclose(torch.from_numpy(logits), one_by_one, atol=1e-5)
    assert metrics["n"] == 17 and 0 <= metrics["accuracy"] <= 1


def test_schedules() -> None:
    cfg = TrainConfig(lr=1.0, warmup=2, schedule="cosine")
    # Steps 0..9 run; the cosine reaches 0 one step past the last (step 10), never on a step that runs.
    assert [round(cfg.learning_rate(s, 10), 4) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.0381]
    assert TrainConfig(lr=0.1).learning_rate(5, 10) == 0.1
    assert TrainConfig(warmup=0.25).warmup_steps(40) == 10


def test_balanced_class_weights() -> None:
    assert class_weights([0, 0, 0, 1], 2, "none") is None
    assert class_weights([0, 0, 0, 1], 3, "balanced").tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])


def test_shards_split_a_global_batch() -> None:
    group = list(range(10))
    shards = [Shard(rank, 3).take(group) for rank in range(3)]
    assert (
        sorted(i for shard in shards for i in shard) == group
        and Shard().take(group) == group
        and Shard(0, 3).is_main
    )


def test_a_signal_before_training_raises_at_once_so_cleanup_runs() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info, InterruptGuard("nothing was written"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once; the sleep is never finished
    assert info.value.exit_code == 143 and "nothing was written" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_deferred_signal_waits_for_check() -> None:
    with InterruptGuard() as guard:
        guard.deferring = True
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.signum == signal.SIGINT  # noted, not raised
        with pytest.raises(Interrupted) as info:
            guard.check("training is saved")
    assert info.value.exit_code == 130 and "training is saved" in str(info.value)


# --- issue 9: checkpoints, resume checks, loss footing, precision changes, devices, DDP saves -------


def test_checkpoints_at_every_epoch_end_every_n_steps_and_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.training.checkpoints as resume_module

    saved: list[tuple[int, int, bool]] = []
    real = resume_module.save_checkpoint

    def record(path: Path, state: dict[str, Any]) -> None:
        loop = state["loop"]
        saved.append((loop["step"], loop["epoch"], loop["stopped"]))
        real(path, state)

    monkeypatch.setattr(resume_module, "save_checkpoint", record)
    run(dataclasses.replace(CFG, epochs=2, checkpoint_every=4), checkpoint=tmp_path / "c.pt")
    # 6 steps an epoch: step 4, the end of epoch 1 (6), step 8, the end of epoch 2 (12) = the end.
    assert saved == [(4, 0, False), (6, 1, False), (8, 1, False), (12, 2, False)]
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["loop"]["epoch"] == 2 and state["data"]["n"] == 43


def test_resuming_a_finished_training_only_restores_the_best_weights(tmp_path: Path) -> None:
    trained, history = run(CFG, checkpoint=tmp_path / "c.pt")
    steps = []

    class Count(TrainProgress):
        def step(self, epoch: int, step: int, loss: float) -> None:
            steps.append(step)

    resumed, again = run(CFG, checkpoint=tmp_path / "c.pt", resume=load_checkpoint(tmp_path / "c.pt"),
                         progress=Count())  # fmt: skip
    assert steps == [] and again.rows == history.rows
    assert max_diff(trainable_state(resumed), trainable_state(trained)) == 0.0


@pytest.mark.slow
def test_a_checkpoint_of_other_data_is_refused_not_looped_on(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Interrupted):
        run(CFG, checkpoint=ckpt, progress=KillAt(5, signal.SIGINT))
    state = load_checkpoint(ckpt)
    model = tiny_classifier(["a", "b"], seed=7)
    train, val = data(model, n_train=11)  # fewer texts: the saved group 5 is past this epoch's 2
    with pytest.raises(BadInputError, match="training data differ"):
        fit(model, train, val, CFG, device=CPU, precision=FP32, seed=7, resume=state)
    state.pop("data")  # a checkpoint that recorded no data: the position itself is checked
    with pytest.raises(BadInputError, match="batch group 5 of epoch 1, which has only 2"):
        fit(model, train, val, CFG, device=CPU, precision=FP32, seed=7, resume=state)


def test_train_loss_is_on_the_footing_of_the_validation_loss_with_class_weights() -> None:
    """One step on all texts with a negligible lr: the step's training loss (before the update) and
    the validation loss on the same texts (after it) must agree, weighted training or not."""
    model = tiny_classifier(["a", "b"], seed=7)
    ids, _ = synthetic_ids(40, 2, seed=1)
    labels = [0] * 30 + [1] * 10  # imbalanced: the balanced weights are far from 1
    same = LabelledSet(TokenSource(ids), labels)
    cfg = TrainConfig(epochs=1, batch_size=40, lr=1e-12, weight_decay=0.0, class_weights="balanced")
    history = fit(model, same, same, cfg, device=CPU, precision=FP32, seed=7)
    row = history.rows[0]
    assert row["train_loss"] == pytest.approx(row["val_loss"], abs=1e-6)


@pytest.mark.slow
def test_resume_may_change_into_and_out_of_a_gradient_scaler(tmp_path: Path) -> None:
    """An fp32 run's scaler state is empty; resuming it under fp16 (here bf16 with a scaler, the
    CPU's stand-in) must start a fresh scaler rather than crash, and the other way round."""
    scaled = Precision("bf16", torch.bfloat16, use_scaler=True)
    for first, second in ((FP32, scaled), (scaled, FP32)):
        ckpt = tmp_path / f"{first.use_scaler}.pt"
        with pytest.raises(Interrupted):
            model = tiny_classifier(["a", "b"], seed=7)
            train, val = data(model)
            fit(model, train, val, CFG, device=CPU, precision=first, seed=7, checkpoint=ckpt,
                progress=KillAt(3, signal.SIGINT))  # fmt: skip
        model = tiny_classifier(["a", "b"], seed=7)
        train, val = data(model)
        history = fit(model, train, val, CFG, device=CPU, precision=second, seed=7,
                      resume=load_checkpoint(ckpt))  # fmt: skip
        assert history.steps == 12 and all(math.isfinite(r["train_loss"]) for r in history.rows)


def test_step_sums_are_float32_on_mps_and_float64_elsewhere() -> None:
    """MPS has no float64 (``torch.zeros(4, dtype=torch.float64, device="mps")`` raises)."""
    assert stats_dtype(torch.device("mps")) == torch.float32
    assert stats_dtype(CPU) == stats_dtype(torch.device("cuda", 0)) == torch.float64


def _slow_save_worker(rank: int, port: int, out: str) -> None:
    """Rank 0's checkpoint outlasts the collective timeout twice over; the others must wait for it."""
    import gptclf.training.checkpoints as resume_module
    from gptclf.distributed import process_group

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    real = resume_module.save_checkpoint
    marker = Path(out) / "rank1-waiting"

    def slow(path: Path, state: dict[str, Any]) -> None:
        outlast(marker, 4)  # rank 1 is seen waiting for the save; it waits twice the timeout more
        real(path, state)

    resume_module.save_checkpoint = slow
    with process_group("cpu", timeout=2) as shard:
        if not shard.is_main:  # a frozen dataclass: the method is replaced on the instance this way
            object.__setattr__(shard, "slow_barrier", entering_marks(shard.slow_barrier, marker))
        model = tiny_classifier(["a", "b"], seed=7)
        train, val = data(model)
        cfg = dataclasses.replace(CFG, epochs=2, batch_size=4)
        history = fit(model, train, val, cfg, device=CPU, precision=FP32, seed=7, shard=shard,
                      checkpoint=Path(out) / "c.pt")  # fmt: skip
    (Path(out) / f"done{rank}").write_text(str(history.steps))


@pytest.mark.slow
def test_ranks_wait_for_a_checkpoint_that_outlasts_the_collective_timeout(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(_slow_save_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    assert (tmp_path / "done0").read_text() == (tmp_path / "done1").read_text() == "12"


def test_a_pooled_cache_trains_the_head_exactly_as_the_cache_of_every_token() -> None:
    """``--trainable head`` with last-token pooling caches one state per text: the same weights,
    losses and validation numbers, bit for bit, as the cache of every token's state."""
    from gptclf.inference.cache import FeatureCache

    outcomes = []
    for pooled in (True, False):
        model = tiny_classifier(["a", "b"], scope="head", seed=7)
        n_layer = model.gpt.n_layer
        sets = []
        for n, seed in ((43, 1), (17, 2)):
            ids, labels = synthetic_ids(n, 2, seed=seed)
            if pooled:  # what finetune builds: make_sources decides on a pooled cache
                source = make_sources(
                    model, {"s": ids}, scope=parse_scope("head"), use_cache=True, device=CPU, precision=FP32,
                    cache_memory=1 << 30,
                )["s"]  # fmt: skip
                assert isinstance(source, FeatureCache) and source.pooled and source.flat.shape == (n, 32)
            else:
                source = FeatureCache.build(model, ids, n_layer, device=CPU, precision=FP32, batch_size=32)
                assert source.flat.shape[0] == sum(map(len, ids))
            sets.append(LabelledSet(source, labels))
        history = fit(model, sets[0], sets[1], EXACT, device=CPU, precision=FP32, seed=7)
        outcomes.append((trainable_state(model), history.rows))
    (pooled_state, pooled_rows), (token_state, token_rows) = outcomes
    assert pooled_state.keys() == token_state.keys()
    assert all(torch.equal(pooled_state[k], token_state[k]) for k in token_state)
    timeless = [
        [{k: v for k, v in row.items() if k != "elapsed"} for row in rows]
        for rows in (pooled_rows, token_rows)
    ]
    assert timeless[0] == timeless[1]


def test_the_resume_hint_is_given_only_where_a_checkpoint_was_saved() -> None:
    from gptclf.training.checkpoints import with_resume_hint

    hint = "continue with `gptclf adapt --out lm --resume`"
    saved = "SIGINT at step 3 of 9: saved a resumable checkpoint in w/checkpoint.pt; continue with --resume"
    assert with_resume_hint(saved, hint) == (
        "SIGINT at step 3 of 9: saved a resumable checkpoint in w/checkpoint.pt; " + hint
    )
    at_once = "SIGINT: stopped at once; nothing was written"  # before the first step: nothing to resume
    assert with_resume_hint(at_once, hint) == at_once
