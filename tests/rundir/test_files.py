"""The run's weights, run.json and tokenizer files: saved, loaded, verified."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gptclf.errors import BadInputError
from gptclf.fileio import sha256_file
from gptclf.model.classifier import Classifier, parse_scope
from gptclf.model.config import GPTConfig
from gptclf.model.tokenizer import collate
from gptclf.rundir import build_run_info, classifier_state, load_run, save_run
from tests.finetune_helpers import TINY, install_tokenizer, tiny_classifier


def info_for(model: Classifier, scope: str = "last-block") -> dict[str, object]:
    return build_run_info(
        model_name="custom", config=TINY, classes=model.classes, max_length=64, pooling=model.pooling,
        trainable=parse_scope(scope).to_dict(), trainable_params=1, train={"epochs": 1}, seed=1,
        weights="random", data={"dir": "/somewhere", "fingerprint": "abc"},
    )  # fmt: skip


@pytest.mark.parametrize(("scope", "pooling"), [("last-block", "last-token"), ("lora", "mean")])
def test_a_saved_run_loads_and_predicts_the_same(tmp_path: Path, scope: str, pooling: str) -> None:
    tokenizer = install_tokenizer()
    model = tiny_classifier(["spam", "ham", "other"], scope=scope, pooling=pooling, seed=2).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as if trained, so merging has something to fold in
    ids, lengths = collate([[10, 20, 30], [40, 50, 60, 70, 80]])
    with torch.no_grad():
        expected = model(ids, lengths)
    run = tmp_path / "run"
    save_run(run, model, info_for(model, scope), tokenizer)
    assert sorted(p.name for p in run.iterdir()) == [
        "encoder.json",
        "model.safetensors",
        "run.json",
        "vocab.bpe",
    ]
    loaded = load_run(run)
    assert loaded.classes == ["spam", "ham", "other"] and loaded.model.pooling == pooling
    assert loaded.max_length == 64 and loaded.info["data"]["fingerprint"] == "abc"
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids, lengths), expected, atol=1e-5)
    assert loaded.tokenizer.encode_ordinary("Hello, world") == [15496, 11, 995]
    has_adapters = any("lora_" in n for n, _ in model.named_parameters())
    assert has_adapters == (scope == "lora")  # saving merged a copy, not the live model


def test_saved_state_is_plain_fp32_without_adapters() -> None:
    model = tiny_classifier(["a", "b"], scope="lora")
    state = classifier_state(model)
    assert not any("lora" in k for k in state)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
    assert state["lm_head.weight"].shape == (2, TINY.n_embd)


def test_weights_that_do_not_match_run_json_are_refused(tmp_path: Path) -> None:
    tokenizer = install_tokenizer()
    model = tiny_classifier(["a", "b"])
    save_run(tmp_path, model, info_for(model), tokenizer)
    info = json.loads((tmp_path / "run.json").read_text())
    info["classes"] = ["a", "b", "c"]  # a 3-way head cannot take 2-way weights
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(BadInputError, match=r"does not match run\.json"):
        load_run(tmp_path)


def fake_tokenizer(root: Path) -> Path:
    """Stand-in tokenizer files: enough for tests that fail before the tokenizer is loaded."""
    folder = root / "fake_tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("encoder.json", "vocab.bpe"):
        (folder / name).write_bytes(b"x")
    return folder


def saved_run(
    root: Path, classes: tuple[str, ...] = ("a", "b"), cfg: GPTConfig = TINY, tokenizer: Path | None = None
) -> Path:
    """A run of a random tiny model (with fake tokenizer files unless ``tokenizer`` is given)."""
    model = tiny_classifier(list(classes), cfg=cfg)
    info = build_run_info(
        model_name="custom", config=cfg, classes=list(classes), max_length=16, pooling="last-token",
        trainable={"kind": "last-block"}, trainable_params=1, train={"epochs": 1, "pad_length": None},
        seed=1, weights="random", data={"dir": "/somewhere", "fingerprint": "abc"},
    )  # fmt: skip
    run = root / "run"
    save_run(run, model, info, tokenizer or fake_tokenizer(root))
    return run


def corrupt_middle(path: Path, n: int = 64) -> None:
    """Overwrite ``n`` bytes in the middle of a file with other bytes, as a bad disk or copy would."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes((b + 1) % 256 for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_run_json_records_the_sha256_of_the_weights_as_written(tmp_path: Path) -> None:
    run = saved_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["weights_sha256"] == sha256_file(run / "model.safetensors")


def test_weights_damaged_in_the_middle_are_refused_with_one_line(tmp_path: Path) -> None:
    run = saved_run(tmp_path)
    corrupt_middle(run / "model.safetensors")
    with pytest.raises(BadInputError, match=r"model\.safetensors does not match the sha256") as caught:
        load_run(run)
    assert "\n" not in str(caught.value) and "copy the run folder again" in str(caught.value)


def test_a_run_without_a_recorded_sha256_still_loads(tmp_path: Path) -> None:
    """Runs written before weights_sha256 existed load as before."""
    run = saved_run(tmp_path, tokenizer=install_tokenizer())
    info = json.loads((run / "run.json").read_text())
    del info["weights_sha256"]
    (run / "run.json").write_text(json.dumps(info))
    assert load_run(run).classes == ["a", "b"]


def test_weights_of_another_size_are_refused_in_one_line(tmp_path: Path) -> None:
    run = saved_run(tmp_path / "a")
    wide = saved_run(tmp_path / "b", cfg=GPTConfig(n_layer=2, n_head=2, n_embd=64, n_positions=64))
    (wide / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    with pytest.raises(BadInputError) as caught:
        load_run(wide)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert "has shape (50257, 32) in the file but (50257, 64) by run.json" in message
    assert "other tensors" in message and "belong to another run" in message


@pytest.mark.parametrize(("pooling", "train", "expected"), [
    ("last-position", {"epochs": 1, "pad_length": 40}, 40),  # the book's fixed padding, as recorded
    ("last-position", {"epochs": 1, "pad_length": None}, None),  # per-batch padding
    ("last-position", None, None),  # a run.json without a train section
    ("last-token", {"epochs": 1, "pad_length": 40}, None),  # never reads a pad: per batch is exact
])  # fmt: skip
def test_pad_length_is_what_run_json_records(
    tmp_path: Path, pooling: str, train: dict[str, Any] | None, expected: int | None
) -> None:
    model = tiny_classifier(["a", "b"], pooling=pooling)
    info = {**info_for(model), "max_length": 40, "train": train}
    if train is None:
        del info["train"]
    run = tmp_path / "run"
    save_run(run, model, info, install_tokenizer())
    assert load_run(run).pad_length == expected


# --- issue 18 items 6 and 9: a dead writer's debris, and a swap while the run is read ---------------


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two complete runs of different weights, at ``run`` and ``other``."""
    from tests.inference.test_predict import make_run

    first = make_run(tmp_path / "run", model=tiny_classifier(["spam", "ham"], seed=1))
    second = make_run(tmp_path / "other", model=tiny_classifier(["spam", "ham"], seed=2))
    return first, second


def test_a_swap_between_run_json_and_the_weights_reads_the_new_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.rundir.files as files
    from gptclf.rundir.build import _swap

    run, other = _two_runs(tmp_path)
    new_sha = json.loads((other / "run.json").read_text())["weights_sha256"]
    real_read = files.read_run_info
    swaps = []

    def read_then_swap(folder: Path) -> dict[str, Any]:
        info = real_read(folder)
        if not swaps:  # `finetune --force` swaps its new run in right after run.json was read
            _swap(other, run)
            swaps.append(1)
        return info

    monkeypatch.setattr(files, "read_run_info", read_then_swap)
    loaded = load_run(run)  # verified: the sha256 of the weights matches the run.json read with them
    assert swaps and loaded.info["weights_sha256"] == new_sha


@pytest.mark.slow
def test_a_run_swapped_over_and_over_always_loads_a_consistent_pair(tmp_path: Path) -> None:
    import threading

    from gptclf.fileio import exchange_paths

    run, other = _two_runs(tmp_path)
    shas = {json.loads((p / "run.json").read_text())["weights_sha256"] for p in (run, other)}
    stop = threading.Event()
    started = time.monotonic()
    load_run(run)
    # A swap about every two loads, however fast this machine loads now (a loaded CI machine is
    # slower): more often and every read would be outrun, which load_run rightly refuses.
    every = 2 * (time.monotonic() - started)

    def swapper() -> None:
        while not stop.wait(every):  # the atomic exchange of `finetune --force`
            exchange_paths(other, run)

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        loaded = [load_run(run).info["weights_sha256"] for _ in range(15)]  # each one verified
    finally:
        stop.set()
        thread.join()
    assert set(loaded) <= shas


#: A `gptclf calibrate` whose run.json write stops in its fsync until the test kills it with -9.
_CALIBRATE_STOPPED_IN_ITS_WRITE = """
import os, sys, time
real_fsync = os.fsync
def stuck(fd):  # the fsync of run.json's temporary file: there the child waits to be killed
    if ".run.json.gptclf-" not in os.readlink(f"/proc/self/fd/{fd}"):
        return real_fsync(fd)
    sys.stderr.write("writing\\n"); sys.stderr.flush()
    time.sleep(600)
os.fsync = stuck
from cli.main import app
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_the_next_command_removes_a_dead_calibrates_half_written_run_json(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.finetune_helpers import prepared_folder
    from tests.inference.test_predict import make_run

    data = prepared_folder(tmp_path, ["ham", "spam"], n=60)
    recorded = {"dir": str(data), "fingerprint": None}
    run = make_run(tmp_path / "run", ["ham", "spam"], max_length=16, data=recorded)
    whole = (run / "run.json").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CALIBRATE_STOPPED_IN_ITS_WRITE, "calibrate", str(run)],
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # the child says when it is in the write: then it is killed
        if line.strip() == "writing":
            break
    temps = [p for p in run.iterdir() if p.name.startswith(".run.json.gptclf-")]
    proc.kill()
    proc.wait()
    assert len(temps) == 1 and temps[0].exists()  # what the kill left
    loaded = load_run(run)  # the next command that opens the run cleans it away
    assert not temps[0].exists() and loaded.info["classes"] == ["ham", "spam"]
    assert (run / "run.json").read_bytes() == whole


def test_a_live_writers_temporary_file_is_kept(tmp_path: Path) -> None:
    import os

    run, _ = _two_runs(tmp_path)
    mine = run / f".run.json.gptclf-{os.getpid()}-0a1b2c3d.tmp"  # this process is alive
    mine.write_text("{")
    load_run(run)
    assert mine.exists()


def test_a_full_disk_while_saving_weights_is_the_oserror_it_is(tmp_path: Path) -> None:
    import errno

    from gptclf.rundir import save_weights
    from tests.fault_helpers import fill, tmpfs

    state = {"w": torch.zeros(256, 1024)}  # 1 MiB
    with tmpfs(tmp_path / "disk", "4m") as disk:
        filler = fill(disk, keep=64 << 10)
        with pytest.raises(OSError) as caught:
            save_weights(disk / "model.safetensors", state)
        assert caught.value.errno == errno.ENOSPC
        assert sorted(p.name for p in disk.iterdir()) == [filler.name]  # no half file, no temp folder
