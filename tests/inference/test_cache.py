from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gptclf.device import resolve_precision
from gptclf.distributed import Shard
from gptclf.inference import cache as features
from gptclf.inference import cache_plan as cache_plan_module
from gptclf.inference.batching import TokenSource, collate
from gptclf.inference.cache import FeatureCache, make_sources
from gptclf.inference.cache_file import StateFile
from gptclf.inference.cache_plan import cacheable_blocks, check_spill_space, host_name, place_caches
from gptclf.model.classifier import parse_scope
from tests.conftest import REPO
from tests.finetune_helpers import full_logits, run_batch, synthetic_ids, tiny_classifier

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)
LAST_BLOCK = parse_scope("last-block")  # the first of the tiny model's 2 blocks is cached


def build(
    ids: list[list[int]], location: str = "memory", spill: Path | None = None, **kw: object
) -> FeatureCache:
    model = tiny_classifier(["a", "b"], seed=4)
    return FeatureCache.build(
        model,
        ids,
        1,
        device=CPU,
        precision=FP32,
        location=location,
        batch_size=5,
        spill_dir=spill,
        **kw,
    )


def test_cache_holds_each_text_unpadded_and_repads_exactly() -> None:
    """Right padding + causal attention: a text's states do not depend on its batch's padding."""
    ids, _ = synthetic_ids(23, 2, seed=1)
    model = tiny_classifier(["a", "b"], seed=4).eval()
    cache = FeatureCache.build(model, ids, 1, device=CPU, precision=FP32, batch_size=5)
    assert cache.flat.shape == (sum(len(x) for x in ids), 32) and cache.location == "memory"
    picked = [3, 0, 17, 9]
    batch = cache.batch(picked, CPU)
    with torch.no_grad():
        input_ids, lengths = collate([ids[i] for i in picked])
        direct = model(input_ids, lengths, stop_block=1)  # this batch's own padding, unlike the cache's
    assert torch.equal(batch.lengths, lengths) and batch.start_block == 1 and batch.input_ids is None
    for row, n in enumerate(lengths.tolist()):
        assert torch.allclose(batch.hidden[row, :n], direct[row, :n], atol=1e-5)
        assert not batch.hidden[row, n:].any()  # zeros after the text
    with torch.no_grad():
        cached_logits = run_batch(model, batch)
        plain_logits = run_batch(model, TokenSource(ids).batch(picked, CPU))
    assert torch.allclose(cached_logits, plain_logits, atol=1e-5)


@pytest.mark.parametrize("pad_to", [None, 40])
def test_cache_beyond_the_budget_is_a_file_read_a_batch_at_a_time_and_removed(
    tmp_path: Path, pad_to: int | None
) -> None:
    ids, _ = synthetic_ids(15, 2, seed=2)
    in_memory = build(ids, pad_to=pad_to)
    on_disk = build(ids, location="disk", spill=tmp_path, pad_to=pad_to)
    assert on_disk.location == "disk" and isinstance(on_disk.flat, StateFile)  # read, never mapped
    files = list(tmp_path.glob("gptclf-cache-*/states.f32"))
    assert len(files) == 1 and files[0].stat().st_size == on_disk.nbytes == in_memory.nbytes
    for picked in ([4, 2, 8], [0], list(range(15))):
        got, want = on_disk.batch(picked, CPU), in_memory.batch(picked, CPU)
        assert torch.equal(got.hidden, want.hidden) and torch.equal(got.lengths, want.lengths)
        assert got.start_block == want.start_block
    on_disk.close()
    assert not list(tmp_path.iterdir())


def test_a_pooled_cache_on_disk_gives_the_pooled_cache_in_memorys_batches(tmp_path: Path) -> None:
    """Every block frozen, last-token pooling: one state a text, on disk as in RAM."""
    ids, _ = synthetic_ids(12, 2, seed=5)
    model = tiny_classifier(["a", "b"], seed=4)
    kw: dict[str, Any] = {"device": CPU, "precision": FP32, "batch_size": 5, "pooled": True}
    in_memory = FeatureCache.build(model, ids, 2, **kw)
    on_disk = FeatureCache.build(model, ids, 2, location="disk", spill_dir=tmp_path, **kw)
    got, want = on_disk.batch([7, 1, 3], CPU), in_memory.batch([7, 1, 3], CPU)
    assert got.hidden.shape == (3, 1, model.gpt.config.n_embd)
    assert torch.equal(got.hidden, want.hidden) and torch.equal(got.lengths, want.lengths)
    on_disk.close()


def test_a_cache_on_disk_builds_on_a_base_cache_on_disk_like_one_in_memory(tmp_path: Path) -> None:
    """Cuts built on each other (tune's pool) read the base cache's batches from its file."""
    ids, _ = synthetic_ids(11, 2, seed=6)
    model = tiny_classifier(["a", "b"], seed=4)
    kw: dict[str, Any] = {"device": CPU, "precision": FP32, "batch_size": 4}
    base = FeatureCache.build(model, ids, 1, location="disk", spill_dir=tmp_path, **kw)
    above = FeatureCache.build(model, ids, 2, location="disk", spill_dir=tmp_path, base=base, **kw)
    plain = FeatureCache.build(model, ids, 2, **kw)
    everything = list(range(11))
    assert torch.equal(above.batch(everything, CPU).hidden, plain.batch(everything, CPU).hidden)
    base.close()
    above.close()


def test_budget_is_shared_between_splits(tmp_path: Path) -> None:
    ids, _ = synthetic_ids(10, 2, seed=3)
    one_split = sum(len(x) for x in ids) * 32 * 4
    model = tiny_classifier(["a", "b"], seed=4)
    sources = make_sources(
        model, {"train": ids, "validation": ids}, scope=LAST_BLOCK, use_cache=True, device=CPU,
        precision=FP32, cache_memory=one_split + 10, spill_dir=tmp_path,
    )  # fmt: skip
    assert [s.location for s in sources.values()] == ["memory", "disk"]  # type: ignore[attr-defined]
    for source in sources.values():
        source.close()
    assert not list(tmp_path.iterdir())


def test_pad_to_pads_cached_batches_too() -> None:
    ids, _ = synthetic_ids(6, 2, seed=4)
    cache = build(ids, pad_to=40)
    assert cache.batch([0, 1], CPU).hidden.shape == (2, 40, 32)
    assert TokenSource(ids, pad_to=40).batch([0, 1], CPU).input_ids.shape == (2, 40)


@pytest.mark.parametrize(
    ("scope", "pooling", "use_cache", "cached"),
    [
        ("last-block", "last-token", True, True),
        ("head", "mean", True, True),
        ("last-block", "last-token", False, False),  # --no-cache
        ("all", "last-token", True, False),  # every block trains
        ("lora", "last-token", True, False),  # adapters in every block
        ("last-block", "last-position", True, False),  # reads a pad, whose state depends on the batch
    ],
)
def test_cache_is_used_only_where_exact(scope: str, pooling: str, use_cache: bool, cached: bool) -> None:
    ids, _ = synthetic_ids(4, 2, seed=5)
    model = tiny_classifier(["a", "b"], scope=scope, pooling=pooling)
    sources = make_sources(
        model, {"train": ids}, scope=parse_scope(scope), use_cache=use_cache, device=CPU, precision=FP32,
        cache_memory=1 << 20,
    )  # fmt: skip
    assert isinstance(sources["train"], FeatureCache) is cached
    if cached:
        assert sources["train"].start_block == cacheable_blocks(model.gpt, parse_scope(scope), pooling)


def test_cpu_bf16_autocast_builds_a_close_cache() -> None:
    ids, _ = synthetic_ids(8, 2, seed=6)
    model = tiny_classifier(["a", "b"], seed=4)
    bf16 = FeatureCache.build(model, ids, 1, device=CPU, precision=resolve_precision("bf16", CPU))
    fp32 = build(ids)
    assert bf16.flat.dtype == torch.float32
    diff = (bf16.flat - fp32.flat).abs().max()
    assert 0 < diff < 0.1  # bf16 matmuls ran (not bit-identical), and stayed close


@pytest.mark.parametrize("scope", ["last-block", "last-blocks 2", "lora", "head"])
def test_last_token_shortcut_equals_the_full_forward(scope: str) -> None:
    """The final block run at the pooled position only: same logits and same gradients."""
    ids, _ = synthetic_ids(7, 3, seed=7)
    model = tiny_classifier(["a", "b", "c"], scope=scope, seed=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    input_ids, lengths = collate(ids)
    grads = []
    for forward in (lambda: model(input_ids, lengths), lambda: full_logits(model, input_ids, lengths)):
        model.zero_grad()
        logits = forward()
        (logits * torch.arange(1.0, 4.0)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["logits"] = logits.detach()
    assert float((grads[0].pop("logits") - grads[1]["logits"]).abs().max()) < 1e-5
    for name, grad in grads[0].items():  # gradients reach ~10 here: compare relative to their size
        assert torch.allclose(grad, grads[1][name], rtol=1e-4, atol=1e-5), name
    with torch.no_grad():
        hidden = model(input_ids, lengths, stop_block=1)
        cached = model(None, lengths, hidden=hidden, start_block=1)
        assert torch.allclose(cached, grads[1]["logits"], atol=1e-5)


def test_last_position_with_fixed_padding_is_cached_exactly() -> None:
    """The book's pooling (position -1) with the book's padding: cached pads give the same logits."""
    ids, _ = synthetic_ids(9, 2, seed=6)
    pad_to = max(len(x) for x in ids) + 3
    model = tiny_classifier(["a", "b"], pooling="last-position", seed=4).eval()
    kwargs = {"device": CPU, "precision": FP32, "cache_memory": 1 << 20, "pad_to": pad_to}
    cached = make_sources(model, {"train": ids}, scope=LAST_BLOCK, use_cache=True, **kwargs)["train"]
    plain = make_sources(model, {"train": ids}, scope=LAST_BLOCK, use_cache=False, **kwargs)["train"]
    assert isinstance(cached, FeatureCache) and isinstance(plain, TokenSource)
    picked = [4, 0, 7]
    with torch.no_grad():
        torch.testing.assert_close(
            run_batch(model, cached.batch(picked, CPU)),
            run_batch(model, plain.batch(picked, CPU)),
            atol=1e-5,
            rtol=0,
        )


MIB = 1 << 20


def test_placement_accounts_for_every_split_at_once() -> None:
    """Train claims first, then validation; together they get half the free GPU memory, not half
    each; test, read once at the end, never takes GPU memory."""
    sizes = {"test": 100 * MIB, "validation": 300 * MIB, "train": 400 * MIB}  # test listed first
    place = place_caches(sizes, gpu_free=1000 * MIB, ram=1 << 40)
    assert place == {"test": "memory", "validation": "memory", "train": "gpu"}  # 400 + 300 > 500
    assert list(place) == list(sizes)  # in the caller's order
    roomy = place_caches(sizes, gpu_free=2000 * MIB, ram=1 << 40)
    assert roomy == {"test": "memory", "validation": "gpu", "train": "gpu"}
    # A train cache too large for the GPU leaves the room to validation, and the rest goes to disk.
    assert place_caches(
        {"train": 900 * MIB, "validation": 300 * MIB, "test": 300 * MIB}, gpu_free=1000 * MIB, ram=400 * MIB
    ) == {"train": "disk", "validation": "gpu", "test": "memory"}
    off_cuda = place_caches(sizes, gpu_free=None, ram=500 * MIB)
    assert off_cuda == {"test": "memory", "validation": "disk", "train": "memory"}


def test_ram_budget_is_the_machines_shared_by_its_local_ranks() -> None:
    sizes = {"train": 300 * MIB, "validation": 100 * MIB, "test": 100 * MIB}
    assert place_caches(sizes, gpu_free=None, ram=900 * MIB, local_ranks=1) == dict.fromkeys(sizes, "memory")
    assert place_caches(sizes, gpu_free=None, ram=900 * MIB, local_ranks=2) == {
        "train": "memory", "validation": "memory", "test": "disk"
    }  # fmt: skip
    assert place_caches(sizes, gpu_free=None, ram=900 * MIB, local_ranks=4) == {
        "train": "disk", "validation": "memory", "test": "memory"
    }  # fmt: skip


def test_local_ranks_of_a_shard_share_cache_memory(tmp_path: Path) -> None:
    """Through make_sources: a budget one process fits in spills to disk on each of 2 local ranks."""
    ids, _ = synthetic_ids(10, 2, seed=3)
    nbytes = sum(len(x) for x in ids) * 32 * 4
    model = tiny_classifier(["a", "b"], seed=4)
    kwargs = {"scope": LAST_BLOCK, "use_cache": True, "device": CPU, "precision": FP32, "spill_dir": tmp_path}
    for local_ranks, where in ((1, "memory"), (2, "disk")):
        sources = make_sources(
            model,
            {"train": ids},
            cache_memory=nbytes + 10,
            shard=Shard(local_world_size=local_ranks),
            **kwargs,
        )
        assert sources["train"].location == where  # type: ignore[attr-defined]
        sources["train"].close()


def test_cuda_placement_measures_free_memory_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_sources on CUDA, with the cache build stubbed: one measure, one decision for all splits."""
    measured: list[object] = []

    def mem_get_info(device: object = None) -> tuple[int, int]:
        measured.append(device)
        return 1000 * MIB, 2000 * MIB

    built: dict[str, str] = {}

    def fake_build(model: object, ids: list[list[int]], start: int, *, location: str, **kw: object) -> object:
        built[str(len(ids))] = location
        return TokenSource(ids)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(FeatureCache, "build", fake_build)
    monkeypatch.setattr(features, "remove_stale_caches", lambda spill_dir, note: [])
    model = tiny_classifier(["a", "b"], seed=4)
    model.gpt.config = dataclasses.replace(model.gpt.config, n_embd=MIB // 4)  # 1 MiB per token
    splits = {"train": [[1] * 200, [2] * 100], "validation": [[3] * 150], "test": [[4] * 50] * 4}
    make_sources(
        model, splits, scope=LAST_BLOCK, use_cache=True, device=torch.device("cuda", 0), precision=FP32,
        cache_memory=1 << 40,
    )  # fmt: skip
    assert measured == [torch.device("cuda", 0)]
    assert built == {"2": "gpu", "1": "gpu"}  # 300 + 150 MiB <= 500; the test split is not cached


BUILD_AND_WAIT = """
import sys, time
from pathlib import Path
import torch
from gptclf.device import resolve_precision
from gptclf.model.classifier import parse_scope
from gptclf.inference.cache import make_sources
from tests.finetune_helpers import synthetic_ids, tiny_classifier

class Slow(list):
    def __getitem__(self, i):
        time.sleep(0.2)  # each text of the build takes a while: the kill comes in the middle
        return list.__getitem__(self, i)

ids, _ = synthetic_ids(300, 2, seed=1)
cpu = torch.device("cpu")
make_sources(
    tiny_classifier(["a", "b"]), {"train": Slow(ids)}, scope=parse_scope("last-block"), use_cache=True,
    device=cpu, precision=resolve_precision("fp32", cpu), cache_memory=0, spill_dir=Path(sys.argv[1]),
)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_builds_cache_folder_is_removed_by_the_next_build(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", BUILD_AND_WAIT, str(spill)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not list(spill.glob("gptclf-cache-*/states.f32")):
            assert child.poll() is None and time.monotonic() < deadline, "the child wrote no cache"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()  # reaped: no zombie that would still count as alive
    (left,) = spill.glob("gptclf-cache-*")
    assert left.name.startswith(f"gptclf-cache-{child.pid}-") and (left / "states.f32").is_file()
    alive = spill / f"gptclf-cache-{os.getpid()}-{host_name()}-live1234"  # this process's own
    alive.mkdir()
    other = spill / "gptclf-cache-notours"
    other.mkdir()
    notes: list[str] = []
    ids, _ = synthetic_ids(5, 2, seed=1)
    sources = make_sources(
        tiny_classifier(["a", "b"]), {"train": ids}, scope=LAST_BLOCK, use_cache=True, device=CPU,
        precision=FP32, cache_memory=0, spill_dir=spill, note=notes.append,
    )  # fmt: skip
    assert not left.exists() and alive.is_dir() and other.is_dir()
    assert len(notes) == 1 and str(left) in notes[0] and f"process {child.pid}, which is gone" in notes[0]
    assert sources["train"].location == "disk"  # type: ignore[attr-defined]
    sources["train"].close()
    assert sorted(p.name for p in spill.iterdir()) == sorted([alive.name, other.name])


def test_a_cache_that_cannot_fit_on_its_spill_disk_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """A memory-mapped cache on a full disk dies of SIGBUS mid-write: its room is checked first."""
    from gptclf.errors import BadInputError
    from tests.fault_helpers import tmpfs

    model = tiny_classifier(["a", "b"], seed=0)
    ids, _ = synthetic_ids(200, 2, seed=1, max_len=60)  # ~6,000 tokens x 32 floats: ~0.8 MB
    with tmpfs(tmp_path / "small", "256k") as disk, pytest.raises(BadInputError, match="MiB on disk in"):
        make_sources(
            model, {"train": ids}, scope=LAST_BLOCK, use_cache=True, device=CPU, precision=FP32,
            cache_memory=0, spill_dir=disk,
        )  # fmt: skip
    check_spill_space(0, tmp_path)  # nothing on disk: nothing to check


def test_without_cache_memory_a_spill_disk_with_no_room_sends_the_cache_to_ram(tmp_path: Path) -> None:
    """The default --cache-memory (a small RAM share and a fallback): a full or unwritable spill
    folder puts the cache in RAM, within the fallback, instead of refusing the run."""
    from gptclf.errors import BadInputError
    from tests.fault_helpers import tmpfs

    model = tiny_classifier(["a", "b"], seed=0)
    ids, _ = synthetic_ids(200, 2, seed=1, max_len=60)  # ~0.8 MB of states
    kw: dict[str, Any] = {"scope": LAST_BLOCK, "use_cache": True, "device": CPU, "precision": FP32}
    with tmpfs(tmp_path / "small", "256k") as disk:
        sources = make_sources(
            model, {"train": ids}, cache_memory=0, ram_fallback=1 << 30, spill_dir=disk, **kw
        )
        assert sources["train"].location == "memory"  # type: ignore[attr-defined]
        assert not list(disk.iterdir())
        with pytest.raises(BadInputError, match="MiB on disk in"):  # the fallback too small: refused
            make_sources(model, {"train": ids}, cache_memory=0, ram_fallback=1 << 10, spill_dir=disk, **kw)
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    sources = make_sources(model, {"train": ids}, cache_memory=0, ram_fallback=1 << 30, spill_dir=roomy, **kw)
    assert sources["train"].location == "disk"  # room on disk: the fallback is not used
    sources["train"].close()


def test_each_local_rank_needs_room_for_its_own_files_and_the_message_says_so(tmp_path: Path) -> None:
    from gptclf.errors import CacheSpaceError

    free = cache_plan_module.spill_room(tmp_path)
    check_spill_space(free // 3, tmp_path, copies=2)
    with pytest.raises(CacheSpaceError, match=r"on disk in .* \(3 processes, each with its own\)"):
        check_spill_space(free // 3 * 4, tmp_path, copies=3)


def test_a_rank_that_cannot_place_its_cache_stops_every_rank_before_any_file_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under torchrun the ranks agree (one small sum) after every rank checked the disk: a rank whose
    check passed stops too, instead of waiting in the cache's sum for one that left."""
    from gptclf.errors import CacheSpaceError

    model = tiny_classifier(["a", "b"], seed=0)
    ids, _ = synthetic_ids(20, 2, seed=1)
    sums: list[float] = []

    def other_rank_failed(self: Shard, tensor: torch.Tensor) -> torch.Tensor:
        sums.append(float(tensor.item()))
        return tensor.add_(1.0)  # the other rank's flag

    monkeypatch.setattr(Shard, "all_sum", other_rank_failed)
    built: list[object] = []
    monkeypatch.setattr(FeatureCache, "build", lambda *a, **k: built.append(1))
    with pytest.raises(
        CacheSpaceError, match="another process of this job cannot place its frozen-trunk cache"
    ):
        make_sources(
            model, {"train": ids}, scope=LAST_BLOCK, use_cache=True, device=CPU, precision=FP32,
            cache_memory=1 << 30, shard=Shard(rank=0, world_size=2, local_world_size=2),
        )  # fmt: skip
    assert sums == [0.0] and not built  # this rank's check passed; nothing was built


def test_a_cache_kept_in_ram_for_want_of_disk_and_a_tmpdir_passed_over_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_classifier(["a", "b"], seed=0)
    ids, _ = synthetic_ids(50, 2, seed=1)
    notes: list[str] = []
    kw: dict[str, Any] = {"scope": LAST_BLOCK, "use_cache": True, "device": CPU, "precision": FP32}
    monkeypatch.setattr(cache_plan_module, "spill_room", lambda spill_dir=None: 1000)
    sources = make_sources(
        model, {"train": ids}, cache_memory=0, ram_fallback=1 << 30, note=notes.append, **kw
    )
    assert sources["train"].location == "memory"  # type: ignore[attr-defined]
    assert len(notes) == 1 and "has 0.0 MiB free, less than the" in notes[0] and "stay in RAM" in notes[0]
    monkeypatch.undo()
    notes.clear()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "absent"))
    sources = make_sources(model, {"train": ids}, cache_memory=0, note=notes.append, **kw)
    assert sources["train"].location == "disk"  # type: ignore[attr-defined]
    assert notes == [f"TMPDIR={tmp_path / 'absent'} cannot be written (or is not a folder): the cache's file "
                     f"goes to {tempfile.gettempdir()}"]  # fmt: skip
    sources["train"].close()


def test_a_spill_folder_that_cannot_be_written_has_no_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptclf.inference import cache_plan

    assert cache_plan.spill_room(tmp_path) > 0
    assert cache_plan.spill_room(tmp_path / "absent") == 0
    monkeypatch.setattr(cache_plan.os, "access", lambda path, mode: False)  # root passes any chmod
    assert cache_plan.spill_room(tmp_path) == 0
    from gptclf.errors import BadInputError

    with pytest.raises(BadInputError, match="cannot be written: point TMPDIR at a writable folder"):
        check_spill_space(1 << 20, tmp_path)


def test_the_cache_build_of_windows_counts_their_texts() -> None:
    """``--long-texts window``: a split's rows are its texts' windows; the build's progress counts texts."""
    from gptclf.data.long_texts import LongTexts
    from gptclf.inference.longtexts import windows_of
    from tests.inference.test_loop_windows import Recorder

    texts, _ = synthetic_ids(12, 2, seed=5, max_len=40)
    made = windows_of(texts, 8, LongTexts("window").resolved(8))
    assert len(made.ids) > 2 * len(texts)
    plain, _ = synthetic_ids(7, 2, seed=6)
    progress = Recorder()
    sources = make_sources(
        tiny_classifier(["a", "b"], seed=4), {"train": made.ids, "validation": plain}, scope=LAST_BLOCK,
        use_cache=True, device=CPU, precision=FP32, cache_memory=1 << 30, batch_size=3,
        progress=progress, windows={"train": made.map, "validation": None},
    )  # fmt: skip
    assert len(sources["train"]) == len(made.ids)  # the cache still holds every window
    assert progress.steps == [
        ("caching the frozen blocks of the train split", len(texts), "texts"),
        ("caching the frozen blocks of the validation split", len(plain), "texts"),
    ]
    assert sum(progress.advanced) == len(texts) + len(plain)


def test_the_test_split_is_read_from_its_tokens_with_the_numbers_of_a_cache() -> None:
    """Read once, after training: a cache would save it no work and hold memory all run."""
    from gptclf.inference.loop import batched_logits

    ids, _ = synthetic_ids(31, 2, seed=3)
    model = tiny_classifier(["a", "b"], seed=4)
    splits = {"train": ids, "validation": ids, "test": ids}
    # finetune builds its caches and evaluates in batches of one size
    sources = make_sources(
        model, splits, scope=LAST_BLOCK, use_cache=True, device=CPU, precision=FP32, cache_memory=1 << 30,
        batch_size=8,
    )  # fmt: skip
    assert isinstance(sources["validation"], FeatureCache) and isinstance(sources["test"], TokenSource)
    tokens, cached = (
        batched_logits(model, sources[n], batch_size=8, device=CPU, precision=FP32)
        for n in ("test", "validation")
    )
    assert torch.equal(tokens, cached)
