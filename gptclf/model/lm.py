"""GPT-2 read as a language model by the training loop: next-token statistics per block of tokens.

The loop, the optimizer step and the inference loop run a model with the classifier's forward
signature, ``(B, T) ids + (B,) lengths -> (B, K)`` rows, and hand the rows to the task
(:mod:`gptclf.tasks.language_model`). :class:`NextToken` is GPT-2 with its tied output layer (the
50,257-way ``lm_head`` that shares ``transformer.wte``'s weight; no class head is swapped in) whose
row per block holds its two sums: the next-token cross-entropy over the block's predicted positions
and how many of them the argmax predicts right (in eval mode; 0 while training, where only the
loss is used). Keeping the (B, T, V) logits inside the forward
means validation stores two numbers a block, not a vocabulary's worth per token.

Block ``b`` of ``lengths[b]`` real tokens predicts tokens 1 .. ``lengths[b] - 1`` from those before
them (``transformers``' ``GPT2LMHeadModel(input_ids, labels=input_ids)`` computes the same positions),
so a padded shorter block counts its own tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptclf.errors import BadInputError
from gptclf.model.classifier import TrainableScope, apply_scope
from gptclf.model.gpt import GPT

#: What each column of :class:`NextToken`'s output is (the loop reads its width from ``classes``).
STATS = ("summed_cross_entropy", "tokens_right")


class NextToken(nn.Module):
    """GPT-2 with its tied output layer: a block of tokens in, ``[summed CE, tokens right]`` out.

    Attributes:
        gpt: The model; its ``lm_head`` stays tied to ``transformer.wte``.
        classes: :data:`STATS`, the names of the output's two columns.
    """

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        if gpt.lm_head.weight is not gpt.transformer.wte.weight:
            raise ValueError("a language model needs GPT-2's output layer tied to wte (no class head)")
        self.gpt = gpt
        self.classes = list(STATS)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        lengths: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start_block: int = 0,
        stop_block: int | None = None,
    ) -> torch.Tensor:
        """(B, 2) float32 next-token sums of a right-padded batch of blocks (see the module notes).

        Args:
            input_ids: (B, T) token ids: the inputs and, shifted by one, the targets.
            lengths: (B,) real tokens per block.
            hidden: Not taken: the targets are the token ids (the classifier's cache does not apply).
            start_block: Must be 0.
            stop_block: Not taken.
        """
        assert input_ids is not None and hidden is None and start_block == 0 and stop_block is None
        gpt = self.gpt
        h = gpt.hidden_states(input_ids[:, :-1])  # (B, T-1, C): the last token predicts nothing here
        logits = gpt.lm_head(h).float()  # (B, T-1, V), in float32 for the loss whatever the autocast
        targets = input_ids[:, 1:]  # (B, T-1)
        b, t = targets.shape
        ce = F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(-1), reduction="none").view(b, t)
        real = torch.arange(t, device=ce.device)[None, :] < (lengths.to(ce.device) - 1)[:, None]  # (B, T-1)
        summed = (ce * real).sum(1)  # (B,)
        if self.training:  # the step uses the loss alone: no pass over (B, T-1, V) for the argmax
            right = torch.zeros_like(summed)
        else:
            right = ((logits.argmax(-1) == targets) & real).sum(1).to(summed.dtype)
        return torch.stack([summed, right], dim=1)  # (B, 2)


def apply_lm_scope(gpt: GPT, scope: TrainableScope, seed: int = 123) -> int:
    """Freeze everything, then unfreeze what ``scope`` trains in a language model.

    ``all`` trains every weight. ``last-block`` / ``last-blocks N`` train those blocks and the final
    LayerNorm; ``lora`` the adapters only. The output layer is the token embedding (tied), so outside
    ``all`` it stays frozen: training it would change the input embeddings too, and make every
    frozen block take part in the backward pass.

    Returns:
        The number of trainable parameters.

    Raises:
        BadInputError: ``head``: a language model has no head of its own to train.
    """
    if scope.kind == "head":
        raise BadInputError(
            "--trainable head: a language model has no head of its own (its output layer is the token "
            "embedding): use all, 'last-blocks N' or lora"
        )
    apply_scope(gpt, scope, seed=seed)
    gpt.transformer.wte.weight.requires_grad_(scope.kind == "all")  # lm_head.weight is this tensor
    return sum(p.numel() for p in gpt.parameters() if p.requires_grad)
