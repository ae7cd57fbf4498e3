"""The GPU paths: tests marked ``gpu`` run where CUDA is and are skipped elsewhere
(``pytest -m gpu`` runs only them). The first tests are their CPU stand-ins and run everywhere:
the gradient-scaler path with bf16 in place of fp16.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.distributed as dist

from gptclf.device import Precision, resolve_device, resolve_precision
from gptclf.distributed import Shard
from gptclf.errors import BadInputError
from gptclf.inference.batching import LabelledSet, TokenSource
from gptclf.inference.cache import FeatureCache, make_sources
from gptclf.model.classifier import Classifier, LoRALinear, parse_scope
from gptclf.training.loop import fit
from gptclf.training.settings import TrainConfig
from tests.finetune_helpers import max_diff, synthetic_ids, tiny_classifier, trainable_state

CPU = torch.device("cpu")
CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-3)
NO_CUDA = not torch.cuda.is_available()


def gpu(test: Callable[..., None]) -> Callable[..., None]:
    """Mark ``test`` as a GPU test: selected by ``pytest -m gpu``, skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")(test))


def _run(
    precision: Precision,
    device: torch.device = CPU,
    cfg: TrainConfig = CFG,
    cache: bool = True,
    inf_grad: bool = False,
) -> tuple[Classifier, dict[str, torch.Tensor]]:
    """Train the tiny classifier through fit; ``inf_grad`` makes the head's gradient infinite."""
    model = tiny_classifier(["a", "b"], seed=7).to(device)
    train_ids, train_labels = synthetic_ids(43, 2, seed=1)
    val_ids, val_labels = synthetic_ids(17, 2, seed=2)
    sources = make_sources(
        model, {"train": train_ids, "validation": val_ids}, use_cache=cache, device=device,
        scope=parse_scope("last-block"), precision=precision,
        cache_memory=1 << 30,
    )  # fmt: skip
    if inf_grad:  # a finite loss whose backward overflows, as fp16 gradients can
        model.gpt.lm_head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    train, val = LabelledSet(sources["train"], train_labels), LabelledSet(sources["validation"], val_labels)
    # No validation after an inf gradient: the weights it leaves unguarded are not finite.
    fit(model, train, None if inf_grad else val, cfg, device=device, precision=precision, seed=7)
    for source in sources.values():
        source.close()
    return model, trainable_state(model)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_the_scaler_path_trains_like_the_unscaled_one(clip: float | None) -> None:
    """bf16 stands in for fp16 on the CPU: the scale is a power of two, so scaling, unscaling (in
    the fused AdamW or before clipping) and the inf checks must leave exactly the same weights."""
    cfg = dataclasses.replace(CFG, clip_grad=clip)
    _, plain = _run(Precision("bf16", torch.bfloat16, use_scaler=False), cfg=cfg)
    _, scaled = _run(Precision("bf16", torch.bfloat16, use_scaler=True), cfg=cfg)
    _, fp32 = _run(resolve_precision("fp32", CPU), cfg=cfg)
    assert max_diff(scaled, plain) < 1e-6
    assert max_diff(scaled, fp32) > 1e-6  # bf16 ran: the comparison can fail


def test_an_infinite_gradient_skips_the_step_under_the_scaler() -> None:
    """One step over the whole set: the scaler finds the inf and skips it, the weights stay."""
    one_step = dataclasses.replace(CFG, epochs=1, batch_size=64)
    before = trainable_state(tiny_classifier(["a", "b"], seed=7))
    _, skipped = _run(Precision("bf16", torch.bfloat16, use_scaler=True), cfg=one_step, inf_grad=True)
    assert max_diff(skipped, before) == 0.0
    _, unguarded = _run(Precision("bf16", torch.bfloat16, use_scaler=False), cfg=one_step, inf_grad=True)
    assert not torch.isfinite(unguarded["gpt.lm_head.weight"]).all()  # what the scaler prevents


@pytest.fixture
def cuda() -> torch.device:
    return resolve_device("cuda")


def _cache(device: torch.device, location: str, n: int = 23) -> FeatureCache:
    model = tiny_classifier(["a", "b"], seed=4).to(device)
    ids, _ = synthetic_ids(n, 2, seed=1)
    precision = resolve_precision("fp32", device)
    return FeatureCache.build(model, ids, 1, device=device, precision=precision, location=location)


@gpu
def test_gpu_cache_holds_train_and_validation_and_matches_a_pinned_ram_cache(cuda: torch.device) -> None:
    """Training's splits are cached on the GPU; the test split, read once after training, is read
    from its token ids (never cached: it would hold memory through the whole run). A cache in
    pinned RAM gives the GPU one's batches exactly."""
    model = tiny_classifier(["a", "b"], seed=4).to(cuda)
    ids, _ = synthetic_ids(20, 2, seed=1)
    scope = parse_scope("last-block")
    precision = resolve_precision("fp32", cuda)
    sources = make_sources(
        model, {"train": ids, "validation": ids, "test": ids}, scope=scope,
        use_cache=True, device=cuda, precision=precision, cache_memory=1 << 30,
    )  # fmt: skip
    caches = {name: s for name, s in sources.items() if isinstance(s, FeatureCache)}
    where = {name: (c.location, c.flat.device.type, c.flat.is_pinned()) for name, c in caches.items()}
    assert where == {"train": ("gpu", "cuda", False), "validation": ("gpu", "cuda", False)}
    assert isinstance(sources["test"], TokenSource)
    start = caches["train"].start_block
    in_ram = FeatureCache.build(
        model, ids, start, device=cuda, precision=precision, location="memory", pooled=caches["train"].pooled
    )
    assert (in_ram.location, in_ram.flat.device.type, in_ram.flat.is_pinned()) == ("memory", "cpu", True)
    picked = [3, 0, 17, 9]
    on_gpu, from_ram = sources["train"].batch(picked, cuda), in_ram.batch(picked, cuda)
    assert on_gpu.hidden.device == from_ram.hidden.device == cuda
    assert torch.equal(on_gpu.hidden, from_ram.hidden) and torch.equal(on_gpu.lengths, from_ram.lengths)
    for source in [*sources.values(), in_ram]:
        source.close()


@gpu
def test_pinned_cache_batches_are_gathered_into_one_reused_pinned_buffer(
    cuda: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(cuda, "memory")
    reference = _cache(cuda, "gpu")
    assert cache.flat.is_pinned()
    pinned: list[int] = []
    real_pin = torch.Tensor.pin_memory

    def counting_pin(self: torch.Tensor, *args: object) -> torch.Tensor:
        pinned.append(self.numel())
        return real_pin(self, *args)

    monkeypatch.setattr(torch.Tensor, "pin_memory", counting_pin)
    first = cache.batch([0, 1, 2, 3], cuda)
    buffer = cache._staging.buffer
    assert buffer is not None and buffer.is_pinned()
    second = cache.batch([3, 1, 0, 2], cuda)  # same size: written over once the first copy is done
    assert cache._staging.buffer is buffer  # reused, not reallocated
    assert all(n <= 4 for n in pinned)  # only the (B,) lengths are pinned, never the states
    torch.cuda.synchronize()
    assert torch.equal(first.hidden, reference.batch([0, 1, 2, 3], cuda).hidden)
    assert torch.equal(second.hidden, reference.batch([3, 1, 0, 2], cuda).hidden)


@gpu
@pytest.mark.parametrize("spec", ["bf16", "fp16"])
def test_a_mixed_precision_training_step_with_the_scaler(cuda: torch.device, spec: str) -> None:
    if spec == "bf16" and torch.cuda.get_device_capability(cuda)[0] < 8:
        pytest.skip("this GPU has no native bf16")
    precision = resolve_precision(spec, cuda)
    assert precision.use_scaler is (spec == "fp16")
    one_epoch = dataclasses.replace(CFG, epochs=1)
    _, state = _run(precision, cuda, cfg=one_epoch)
    _, fp32 = _run(resolve_precision("fp32", cuda), cuda, cfg=one_epoch)
    assert all(torch.isfinite(t).all() for t in state.values())
    assert 0 < max_diff(state, fp32) < 0.05  # low precision ran, and trained like fp32
    scaled = Precision(spec, precision.autocast_dtype, use_scaler=True)
    one_step = dataclasses.replace(CFG, epochs=1, batch_size=64)
    before = {n: t.to(cuda) for n, t in trainable_state(tiny_classifier(["a", "b"], seed=7)).items()}
    _, skipped = _run(scaled, cuda, cfg=one_step, inf_grad=True)
    assert max_diff(skipped, before) == 0.0  # the scaler skipped the step with the inf gradient


@gpu
def test_cuda_n_selects_that_gpu() -> None:
    count = torch.cuda.device_count()
    last = resolve_device(f"cuda:{count - 1}")
    assert last == torch.device("cuda", count - 1)
    precision = resolve_precision("auto", last)
    native = torch.cuda.get_device_capability(last)[0] >= 8
    assert (precision.name, precision.tf32) == ("bf16" if native else "fp16", True)
    cache = _cache(last, "gpu", n=5)
    assert cache.flat.device == last and cache.batch([0, 1], last).hidden.device == last
    layer = LoRALinear(torch.nn.Linear(8, 4), 2, 4.0, torch.Generator().manual_seed(0)).to(last)
    assert layer.merged().weight.device == last
    with pytest.raises(BadInputError, match=f"only {count} CUDA device"):
        resolve_device(f"cuda:{count}")


@gpu
def test_fp32_is_ieee_and_tf32_is_not(cuda: torch.device) -> None:
    gen = torch.Generator(cuda).manual_seed(1)
    a, b = (torch.randn(512, 512, device=cuda, generator=gen) for _ in range(2))
    exact = (a.double() @ b.double()).float()
    with resolve_precision("fp32", cuda).autocast(cuda):
        fp32 = a @ b
    with resolve_precision("tf32", cuda).autocast(cuda):
        tf32 = a @ b
    assert float((fp32 - exact).abs().max()) < 1e-3
    if torch.cuda.get_device_capability(cuda)[0] >= 8:  # TF32 exists from Ampere on
        assert float((tf32 - exact).abs().max()) > float((fp32 - exact).abs().max())


@pytest.fixture
def nccl_group(cuda: torch.device) -> Iterator[None]:
    """A process group of one NCCL process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(cuda)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@gpu
@pytest.mark.usefixtures("nccl_group")
def test_nccl_sums_a_cpu_tensor_through_the_gpu() -> None:
    """The NCCL branch of Shard.all_sum (CPU tensors go through the GPU); the group has one
    process, so a Shard that takes itself for one of two reaches that branch."""
    shard = Shard(rank=0, world_size=2)
    stats = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)
    out = shard.all_sum(stats)
    assert out is stats and out.device.type == "cpu" and out.tolist() == [1.5, 2.0, 3.0]
    rows = torch.arange(12, dtype=torch.float32).view(4, 3)
    strided = rows[:, :2]  # not contiguous: summed through a contiguous copy
    shard.all_sum_rows(strided)
    assert torch.equal(rows, torch.arange(12, dtype=torch.float32).view(4, 3))
