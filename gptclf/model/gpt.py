"""GPT-2 in one readable file, with Hugging Face parameter names.

Shapes in comments: B batch, T tokens, C width (``n_embd``), H heads, D = C // H, V vocabulary.
The parameter names are those of ``transformers.GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn``
...), so a Hugging Face checkpoint maps onto this model name for name; only the four Conv1D weights
are stored transposed there (see :mod:`gptclf.model.weights`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptclf.model.config import GPTConfig


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask, through PyTorch's fused SDPA kernels."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=True)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=True)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, H, T, D)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        # The causal mask means a token never attends to a later one; with right padding the pads
        # come after every real token, so real tokens' outputs do not depend on padding at all.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network, 4x wide, tanh-approximated GELU as in GPT-2."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=True)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=True)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Embeddings, blocks and the final LayerNorm (``GPT2Model`` in Hugging Face's terms)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)


class GPT(nn.Module):
    """GPT-2 language model; ``lm_head`` is tied to ``transformer.wte`` until a head replaces it."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)
        self.lm_head: nn.Linear = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2 was trained

    @property
    def n_layer(self) -> int:
        return len(self.transformer.h)

    def init_weights(self, seed: int) -> None:
        """Random initialisation as GPT-2's paper describes, reproducible from ``seed``.

        Normal(0, 0.02) for linear and embedding weights, zero biases, residual projections
        scaled by 1/sqrt(2 * n_layer).
        """
        gen = torch.Generator().manual_seed(seed)
        std_proj = 0.02 / math.sqrt(2 * self.config.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if ".ln_" in name or name.startswith("transformer.ln_f"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    std = std_proj if name.endswith("c_proj.weight") else 0.02
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings: (B, T) ids -> (B, T, C)."""
        t = input_ids.shape[1]
        if t > self.config.n_positions:
            raise ValueError(f"sequence of {t} tokens is longer than the context ({self.config.n_positions})")
        pos = torch.arange(t, device=input_ids.device)
        return self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))

    def run_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run blocks ``start`` .. ``end - 1`` on hidden states (B, T, C) -> (B, T, C).

        Together with :meth:`embed` this lets a caller compute the frozen first blocks once and
        run only the rest in every epoch.
        """
        for block in self.transformer.h[start:end]:
            x = block(x)
        return x

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states after ``ln_f``: (B, T) -> (B, T, C)."""
        return self.transformer.ln_f(self.run_blocks(self.embed(input_ids)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Output-layer values at every position: (B, T) -> (B, T, V), or (B, T, K) after a head swap."""
        return self.lm_head(self.hidden_states(input_ids))


def build_model(cfg: GPTConfig, seed: int | None = 0) -> GPT:
    """A GPT with ``cfg``'s shape, randomly initialised from ``seed`` (None: leave torch's default)."""
    model = GPT(cfg)
    if seed is not None:
        model.init_weights(seed)
    return model
