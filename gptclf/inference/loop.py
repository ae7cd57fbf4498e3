"""The one batched-inference loop of gptclf.

Validation during training, the frozen-trunk cache build, the test metrics of ``finetune``,
``evaluate`` and ``predict`` all run their model through :func:`run_batches`: the texts are sorted
longest first into batches (each padded only to its own longest text, so little padding), the model
runs in eval mode under ``torch.inference_mode`` and the precision's autocast, each batch's inputs
are copied to the device by its :class:`~gptclf.inference.batching.Source`, and the caller receives each
batch's output with the indices of its texts, which restores the input order. A source may read a
text as several rows (its windows): the loop then batches the rows
(:meth:`~gptclf.inference.batching.Source.rows`), counts a text done once its last row is, and
:func:`batched_logits` folds the rows' logits into one row per text. Under DDP every rank runs
every ``world_size``-th of the same batches. Because every path shares these batches, the same
texts give the same numbers wherever they are evaluated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from gptclf.device import Precision
from gptclf.distributed import Shard
from gptclf.inference.batching import TOKENS_PER_TEXT, BatchPlan, LabelledSet, Source
from gptclf.model.classifier import Classifier
from gptclf.progress import Progress


class BatchModel(Protocol):
    """What the loop runs: a :class:`~gptclf.model.classifier.Classifier`, or an engine standing in for one
    (:class:`gptclf.engines.load.OrtClassifier`), with the classifier's forward signature."""

    classes: list[str]
    training: bool

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def __call__(
        self,
        input_ids: torch.Tensor | None,
        lengths: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start_block: int = 0,
        stop_block: int | None = None,
    ) -> torch.Tensor: ...


#: Receives each batch's output (logits, or hidden states) with the indices of its rows (its texts,
#: unless the source reads a text as several rows: see :meth:`~gptclf.inference.batching.Source.rows`).
Sink = Callable[[Sequence[int], torch.Tensor], None]


def run_batches(
    model: BatchModel,
    source: Source,
    sink: Sink,
    *,
    batch_size: int,
    device: torch.device,
    precision: Precision,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
    stop_block: int | None = None,
    between_batches: Callable[[], None] | None = None,
    progress: Progress | None = None,
    label: str = "inference",
    max_padding: float | None = None,
) -> None:
    """Run ``model`` over every row of ``source`` in length-sorted batches; hand each output to ``sink``.

    Args:
        model: The classifier, on ``device``; it runs in eval mode and is put back as it was.
        source: The texts' model inputs (token ids, or cached hidden states; or a text's windows:
            its rows, :meth:`~gptclf.inference.batching.Source.rows`, are batched like texts).
        sink: Called with each batch's row indices and its output (on ``device``), outside autocast.
        batch_size: Texts per forward pass, at most; and at most ``batch_size *``
            :data:`~gptclf.inference.batching.TOKENS_PER_TEXT` tokens (long texts go in fewer per batch).
        device: Where the model runs.
        precision: The autocast type (and TF32 setting) of the forward passes.
        shard: This process's place in a data-parallel job: it runs its share of the batches.
        stop_block: Return the hidden states after this many blocks instead of logits.
        between_batches: Called before each batch (e.g. to stop on a signal by raising).
        progress: Shown ``label`` with this rank's number of texts as the total (a text read as
            several rows counts once, when the last of its rows is run).
        label: What the progress calls this pass.
        max_padding: End a batch where padding would pass this share of its tokens
            (:func:`~gptclf.inference.batching.sorted_batches`); None: batches of ``batch_size``.
    """
    rows = source.rows()
    # Long texts and windows go in fewer per batch: memory stays that of a batch of short texts.
    lengths = rows.source.lengths
    plan = BatchPlan(lengths, batch_size, batch_size * TOKENS_PER_TEXT, max_padding)
    batches = plan[shard.rank :: shard.world_size]  # this rank's share, as Shard.take (kept lazy)
    progress = progress or Progress()
    texts = _TextsDone(batches, rows.owner)
    progress.begin(label, total=texts.total, unit="texts")
    was_training = model.training
    model.eval()
    try:
        for indices in batches:
            if between_batches is not None:
                between_batches()
            with torch.inference_mode():
                batch = rows.source.batch(indices, device)
                with precision.autocast(device):
                    out = model(
                        batch.input_ids,
                        batch.lengths,
                        hidden=batch.hidden,
                        start_block=batch.start_block,
                        stop_block=stop_block,
                    )
                sink(indices, out)
            progress.advance(texts.done(indices))
    finally:
        model.train(was_training)
        progress.end()


class _TextsDone:
    """Counts the texts of the rows run so far: each row is a text, or with ``owners`` (the text of
    each row: its windows) a text is done once the last of its rows in ``batches`` is."""

    def __init__(self, batches: BatchPlan, owners: torch.Tensor | None) -> None:
        self.owners = None if owners is None else owners.tolist()
        if self.owners is None:
            self.total = batches.total
            return
        self.left = Counter(self.owners[i] for b in batches for i in b)  # rows to go, per text
        self.total = len(self.left)

    def done(self, indices: Sequence[int]) -> int:
        """The texts finished by the rows ``indices`` just run."""
        if self.owners is None:
            return len(indices)
        finished = 0
        for i in indices:
            text = self.owners[i]
            self.left[text] -= 1
            finished += self.left[text] == 0
        return finished


def batched_logits(
    model: BatchModel,
    source: Source,
    *,
    batch_size: int,
    device: torch.device,
    precision: Precision,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
    between_batches: Callable[[], None] | None = None,
    progress: Progress | None = None,
    label: str = "inference",
) -> torch.Tensor:
    """(N, K) float32 logits of every text of ``source``, on the CPU, in input order.

    Under DDP each rank fills the rows of its batches and the logits are summed over the ranks
    (each row is non-zero on one rank only): every rank gets all the logits, computed in the same
    batches as by one process. Where the source reads texts as several rows (their windows), the
    rows are batched like any texts and each text's rows are folded into its one row at the end
    (:meth:`~gptclf.inference.batching.Rows.per_text`). The arguments are those of :func:`run_batches`.
    """
    rows = source.rows()
    logits = torch.zeros(len(rows.source.lengths), len(model.classes), dtype=torch.float32)

    def keep(indices: Sequence[int], out: torch.Tensor) -> None:
        logits[torch.as_tensor(list(indices), dtype=torch.long)] = out.float().cpu()

    run_batches(
        model,
        source,
        keep,
        batch_size=batch_size,
        device=device,
        precision=precision,
        shard=shard,
        between_batches=between_batches,
        progress=progress,
        label=label,
    )
    return rows.per_text(shard.all_sum(logits))


def labelled_metrics(
    model: Classifier,
    data: LabelledSet,
    *,
    device: torch.device,
    precision: Precision,
    batch_size: int = 32,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
    between_batches: Callable[[], None] | None = None,
    progress: Progress | None = None,
    label: str = "evaluating",
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of ``model`` on the whole of ``data``, through :func:`batched_logits` (the same
    batches as ``gptclf evaluate``, so the same numbers).

    Args:
        between_batches: Called before each batch (e.g. to stop on a signal by raising).
        progress: Shows the pass as ``label``.

    Returns:
        ``(metrics, logits)``: the metrics of ``data``'s task and the (N, K)
        float32 logits in input order.
    """
    logits = batched_logits(
        model,
        data.source,
        batch_size=batch_size,
        device=device,
        precision=precision,
        shard=shard,
        between_batches=between_batches,
        progress=progress,
        label=label,
    )
    return data.task.metrics(logits, data.labels, model.classes), logits.numpy()
