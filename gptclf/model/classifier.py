"""Classification head replacement, trainable-scope policies, LoRA adapters and pooling.

The 50,257-way ``lm_head`` (tied to ``wte``) is swapped for a new ``Linear(n_embd, num_classes)``
module; ``wte`` is untouched. A :class:`Classifier` runs GPT-2, pools one vector per text and applies
the head: (B, T) ids + (B,) lengths -> (B, K) logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from gptclf.errors import BadInputError
from gptclf.model.gpt import GPT, Block

POOLINGS = ("last-token", "last-position", "mean")
SCOPE_KINDS = ("head", "last-block", "last-blocks", "all", "lora")


def reads_a_pad(pooling: str) -> bool:
    """Whether ``pooling`` reads a pad's state: position -1 of a right-padded batch is one for
    every shorter text, so such a run must see the padding it was trained with."""
    return pooling == "last-position"


def pooling_problems(mode: str) -> list[str]:
    """What is wrong with the pooling ``mode`` (empty: it is one of :data:`POOLINGS`)."""
    if mode in POOLINGS:
        return []
    return [f"unknown pooling {mode!r}: use one of {', '.join(POOLINGS)}"]


@dataclass(frozen=True)
class TrainableScope:
    """Which parameters train.

    Attributes:
        kind: ``head``, ``last-block`` (last block + final norm + head), ``last-blocks``
            (the last ``n_blocks`` blocks + final norm + head), ``all`` or ``lora``.
        n_blocks: Number of trainable blocks for ``last-blocks``.
        lora_rank: Adapter rank for ``lora``.
        lora_alpha: Adapter scale numerator for ``lora`` (scale = alpha / rank).
    """

    kind: str = "last-block"
    n_blocks: int = 1
    lora_rank: int = 16
    lora_alpha: float = 16.0

    def __post_init__(self) -> None:
        if self.kind not in SCOPE_KINDS:
            raise BadInputError(f"unknown trainable scope {self.kind!r}: use one of {', '.join(SCOPE_KINDS)}")
        if self.n_blocks < 1:
            raise BadInputError(f"last-blocks needs N >= 1 (got {self.n_blocks})")
        # NaN compares False with everything, so "alpha <= 0" alone lets it through: check finiteness.
        if not math.isfinite(self.lora_alpha):
            raise BadInputError(f"--lora-alpha must be a finite number > 0 (got {self.lora_alpha})")
        if self.kind == "lora" and (self.lora_rank < 1 or self.lora_alpha <= 0):
            raise BadInputError(
                f"--lora-rank must be >= 1 and --lora-alpha > 0 (got {self.lora_rank} and {self.lora_alpha})"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def trainable_blocks(self, n_layer: int) -> int:
        """How many of the last blocks have trainable weights (LoRA counts as all)."""
        if self.kind == "head":
            return 0
        if self.kind == "last-block":
            return 1
        if self.kind == "last-blocks":
            if problems := self.problems(n_layer):
                raise BadInputError("; ".join(problems))
            return self.n_blocks
        return n_layer

    def problems(self, n_layer: int, n_embd: int | None = None) -> list[str]:
        """What keeps this scope from fitting a model of ``n_layer`` blocks of width ``n_embd``
        (empty: it fits).

        The scope's own values are checked when it is made; these are the rules that need the model.
        A LoRA rank over the width adds nothing an adapter of rank ``n_embd`` cannot hold (every
        adapted layer has ``n_embd`` inputs or outputs), and a huge one cannot be allocated.
        """
        if self.kind == "last-blocks" and self.n_blocks > n_layer:
            return [f"last-blocks {self.n_blocks} asks for more blocks than the model has ({n_layer})"]
        if self.kind == "lora" and n_embd is not None and self.lora_rank > n_embd:
            return [
                f"--lora-rank {self.lora_rank} is over the model's width ({n_embd}): give at most "
                f"{n_embd} (ranks of 4 to 64 are usual)"
            ]
        return []


def parse_scope(text: str, lora_rank: int = 16, lora_alpha: float = 16.0) -> TrainableScope:
    """Parse ``--trainable``: ``head``, ``last-block``, ``last-blocks N`` (or ``=N``), ``all``, ``lora``."""
    parts = text.replace("=", " ").split()
    if not parts:
        raise BadInputError(f"empty --trainable: use one of {', '.join(SCOPE_KINDS)}")
    kind = parts[0]
    n_blocks = 1
    if kind == "last-blocks":
        if len(parts) != 2 or not parts[1].isdigit():
            raise BadInputError("--trainable last-blocks needs a number of blocks, e.g. 'last-blocks 2'")
        n_blocks = int(parts[1])
    elif len(parts) > 1:
        raise BadInputError(f"--trainable {kind} takes no argument (got {text!r})")
    return TrainableScope(kind=kind, n_blocks=n_blocks, lora_rank=lora_rank, lora_alpha=lora_alpha)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / r) * B @ A``.

    B starts at zero, so the wrapped layer computes exactly what the base layer did until training
    moves it.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming-uniform with a = sqrt(5), as nn.Linear
        with torch.no_grad():
            self.lora_A.copy_(torch.rand(self.lora_A.shape, generator=generator) * 2 * bound - bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight includes the adapter's update, on the base layer's device
        and in its dtype.

        The layer is created uninitialised (``skip_init``): its values are overwritten at once, and
        a default init would draw from the global RNG and change what a seeded run does next.
        """
        weight = self.base.weight
        out = skip_init(
            nn.Linear,
            self.base.in_features,
            self.base.out_features,
            bias=self.base.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            # The update in fp32 at least, then rounded once into the base's dtype.
            wide = torch.promote_types(weight.dtype, torch.float32)
            update = self.lora_B.to(weight.device, wide) @ self.lora_A.to(weight.device, wide)
            out.weight.copy_(weight.to(wide) + self.scale * update)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


_LORA_TARGETS = (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))


def replace_head(model: GPT, num_classes: int, seed: int = 123) -> nn.Linear:
    """Swap the vocabulary-sized output layer for ``Linear(n_embd, num_classes)``.

    The old head was tied to ``transformer.wte``; assigning a new module breaks the tie and leaves
    the embedding exactly as it was.
    """
    if num_classes < 2:
        raise BadInputError(f"a classifier needs at least 2 classes (got {num_classes})")
    head = nn.Linear(model.config.n_embd, num_classes, bias=True)
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(model.config.n_embd)
    with torch.no_grad():
        head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
        head.bias.copy_(torch.rand(head.bias.shape, generator=gen) * 2 * bound - bound)
    model.lm_head = head
    return head


def apply_scope(model: GPT, scope: TrainableScope, seed: int = 123) -> int:
    """Freeze everything, then unfreeze what ``scope`` trains (adding LoRA adapters for ``lora``).

    Returns:
        The number of trainable parameters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    n_layer = model.n_layer
    if scope.kind == "all":
        for p in model.parameters():
            p.requires_grad_(True)
    elif scope.kind == "lora":
        gen = torch.Generator().manual_seed(seed + 1)
        for block in model.transformer.h:
            for parent_name, child_name in _LORA_TARGETS:
                parent = getattr(block, parent_name)
                base = getattr(parent, child_name)
                if not isinstance(base, LoRALinear):
                    setattr(parent, child_name, LoRALinear(base, scope.lora_rank, scope.lora_alpha, gen))
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        k = scope.trainable_blocks(n_layer)
        for block in model.transformer.h[n_layer - k :]:
            for p in block.parameters():
                p.requires_grad_(True)
        if scope.kind != "head":
            for p in model.transformer.ln_f.parameters():
                p.requires_grad_(True)
    for p in model.lm_head.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: GPT) -> None:
    """Fold every LoRA adapter into its base layer, leaving a plain GPT (for saving a run)."""
    for block in model.transformer.h:
        for parent_name, child_name in _LORA_TARGETS:
            parent = getattr(block, parent_name)
            child = getattr(parent, child_name)
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.merged())


def pool(hidden: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per text from (B, T, C) hidden states -> (B, C).

    Args:
        hidden: Final hidden states of a right-padded batch.
        lengths: Number of real tokens of each text, (B,).
        mode: ``last-token`` (position ``length - 1``: never a pad, so padding cannot change the
            result), ``last-position`` (position -1, the book's choice: a pad for shorter texts),
            or ``mean`` (average over the real tokens).
    """
    if mode == "last-token":
        idx = (lengths - 1).clamp(min=0).to(hidden.device)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    if mode == "last-position":
        return hidden[:, -1]
    if mode == "mean":
        t = hidden.shape[1]
        mask = torch.arange(t, device=hidden.device)[None, :] < lengths.to(hidden.device)[:, None]
        mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise BadInputError(pooling_problems(mode)[0])  # the one message for an unknown pooling


class Classifier(nn.Module):
    """GPT-2 with a class head: (B, T) ids and (B,) lengths -> (B, K) logits.

    Its :meth:`forward` is the one forward of gptclf: training (also under DDP, which wraps the
    classifier itself), validation, the frozen-trunk cache build (cut after a block with
    ``stop_block``), evaluation and prediction all go through it.
    """

    def __init__(
        self, gpt: GPT, classes: list[str], pooling: str = "last-token"
    ) -> None:
        super().__init__()
        if problems := pooling_problems(pooling):
            raise BadInputError(problems[0])
        self.gpt = gpt
        self.classes = list(classes)
        self.pooling = pooling

    def forward(
        self,
        input_ids: torch.Tensor | None,
        lengths: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start_block: int = 0,
        stop_block: int | None = None,
    ) -> torch.Tensor:
        """Class logits of a right-padded batch, or the hidden states after block ``stop_block``.

        Args:
            input_ids: (B, T) token ids, or None when ``hidden`` is given.
            lengths: (B,) real tokens per text.
            hidden: (B, T, C) hidden states entering block ``start_block`` (a cache of the frozen
                first blocks), instead of token ids.
            start_block: The first block to run.
            stop_block: Stop after this many blocks and return their (B, T, C) output (what the
                frozen-trunk cache stores) instead of logits.

        Returns:
            (B, K) logits, or (B, T, C) hidden states with ``stop_block``.

        With ``last-token`` pooling only one position of the final block's output is read, the
        last real token's: the final block then computes keys and values at every position (its
        attention needs them) but its query, attention output, MLP, the final norm and the head at
        that one position only, about a sixth of the block's work (in training the largest part of
        each step). The result equals the full computation (a test checks it within 1e-5).
        """
        gpt = self.gpt
        if hidden is None:
            assert input_ids is not None and start_block == 0
            hidden = gpt.embed(input_ids)  # (B, T, C)
        if stop_block is not None:
            return gpt.run_blocks(hidden, start_block, stop_block)
        n_layer = gpt.n_layer
        if self.pooling == "last-token" and start_block < n_layer:
            x = gpt.run_blocks(hidden, start_block, n_layer - 1)  # (B, T, C)
            pos = (lengths - 1).clamp(min=0).to(x.device)
            pooled = _final_block_at(gpt.transformer.h[-1], x, pos)  # (B, C)
            return gpt.lm_head(gpt.transformer.ln_f(pooled))  # (B, K)
        x = gpt.transformer.ln_f(gpt.run_blocks(hidden, start_block))  # (B, T, C)
        return gpt.lm_head(pool(x, lengths, self.pooling))  # (B, K)


def _final_block_at(block: Block, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``block(x)[b, pos[b]]`` for each row b: (B, T, C) -> (B, C), without the other positions."""
    b, t, c = x.shape
    rows = torch.arange(b, device=x.device)
    attn = block.attn
    heads = attn.n_head
    h = block.ln_1(x)  # (B, T, C)
    proj = attn.c_attn
    if isinstance(proj, nn.Linear):  # keys and values at every position, the query at pos only
        kv = F.linear(h, proj.weight[c:], proj.bias[c:])  # (B, T, 2C); GPT-2's c_attn has a bias
        q = F.linear(h[rows, pos], proj.weight[:c], proj.bias[:c])  # (B, C)
    else:  # a LoRA adapter: through the module, which adds the adapter's update
        qkv = proj(h)
        q, kv = qkv[rows, pos, :c], qkv[..., c:]
    q = q.view(b, heads, 1, c // heads)  # (B, H, 1, D): the one query
    k = kv[..., :c].view(b, t, heads, c // heads).transpose(1, 2)  # (B, H, T, D)
    v = kv[..., c:].view(b, t, heads, c // heads).transpose(1, 2)
    # Causal attention for the query at pos: keys 0..pos, never the pads after the text.
    visible = (torch.arange(t, device=x.device)[None, :] <= pos[:, None]).view(b, 1, 1, t)
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=visible, dropout_p=attn.dropout if block.training else 0.0
    )  # (B, H, 1, D)
    y = attn.resid_dropout(attn.c_proj(y.reshape(b, c)))  # (B, C)
    out = x[rows, pos] + y
    return out + block.mlp(block.ln_2(out))
