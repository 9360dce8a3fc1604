"""Semantic Information Integration (SII): fuse an identity's visible and infrared text features into one.

CSDN's stage 2 trains only this module (i2t + t2i contrastive loss between fused text features and cached
image features of both modalities); stage 3 then uses the fused feature of each identity as its text
prototype for the HSE loss. Every variant is built by :func:`make_sii` and shares
``forward(t_vis (B, d), t_ir (B, d)) -> fused (B, d)`` and a class attribute ``fuses``:

- ``official``: what the released code computes. Its "AttentionFusion" takes the visible feature as the
  query and the infrared feature as the only key, so the softmax is over one key and always 1; what is
  left is ``t_vis + W_c dropout(tanh(W_v t_ir))`` (W_q and W_k of the released code never receive a
  gradient and are omitted here).
- ``attention``: a genuine multi-head softmax attention over the identity's two modality tokens (queries
  from each token, keys/values from both), residual + LayerNorm, then the mean of the two tokens. It has
  no modality embedding, so it is symmetric in its two inputs.
- ``mean``: parameter-free ``(t_vis + t_ir) / 2`` of the raw features. Raw, not L2-normalised: the HSE
  logits are raw dot products, so the prototypes keep the scale of the text features the image side was
  aligned to in stage 1.
- ``none``: no fusion (``fuses = False``; calling it raises). Stage 2 is skipped and in stage 3 each
  modality's images align to their own modality's prompts; :func:`text_prototypes` returns exactly that.

Only ``official`` and ``attention`` have parameters, so stage 2 has something to train only for those.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csdn.data.records import INFRARED, VISIBLE

SII_KINDS = ("official", "attention", "mean", "none")


def _check_pair(t_vis: Tensor, t_ir: Tensor, dim: int | None = None) -> None:
    if t_vis.dim() != 2 or t_vis.shape != t_ir.shape:
        raise ValueError(
            f"SII expects t_vis and t_ir of the same shape (B, d), got {tuple(t_vis.shape)} and {tuple(t_ir.shape)}"
        )
    if dim is not None and t_vis.shape[1] != dim:
        raise ValueError(f"SII was built for dim {dim}, got features of dim {t_vis.shape[1]}")


class OfficialSII(nn.Module):
    """The released code's fusion: ``t_vis + W_c(dropout(tanh(W_v t_ir)))`` (both Linear layers with bias)."""

    fuses = True

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dim = dim
        self.value = nn.Linear(dim, dim)  # W_v: the infrared feature's value projection
        self.dropout = nn.Dropout(dropout)
        self.common = nn.Linear(dim, dim)  # W_c: maps the value back into the text space

    def forward(self, t_vis: Tensor, t_ir: Tensor) -> Tensor:
        _check_pair(t_vis, t_ir, self.dim)
        return t_vis + self.common(self.dropout(torch.tanh(self.value(t_ir))))


class AttentionSII(nn.Module):
    """Multi-head self-attention over the two modality tokens of each identity, residual + LayerNorm, mean."""

    fuses = True

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention SII: dim {dim} is not divisible by heads {heads}")
        self.dim = dim
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, t_vis: Tensor, t_ir: Tensor) -> Tensor:
        _check_pair(t_vis, t_ir, self.dim)
        tokens = torch.stack([t_vis, t_ir], dim=1)  # (B, 2, d): one token per modality
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.norm(tokens + self.dropout(attended)).mean(dim=1)

    @torch.no_grad()
    def attention_weights(self, t_vis: Tensor, t_ir: Tensor) -> Tensor:
        """Per-head attention ``(B, heads, 2, 2)``: row = querying token, column = attended token,
        index 0 = visible, 1 = infrared (for inspection)."""
        _check_pair(t_vis, t_ir, self.dim)
        tokens = torch.stack([t_vis, t_ir], dim=1)
        _, weights = self.attention(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
        return weights


class MeanSII(nn.Module):
    """Parameter-free fusion: the average of the raw visible and infrared features."""

    fuses = True

    def forward(self, t_vis: Tensor, t_ir: Tensor) -> Tensor:
        _check_pair(t_vis, t_ir)
        return (t_vis + t_ir) / 2


class NoSII(nn.Module):
    """No fusion: each modality keeps its own prompts' features (see :func:`text_prototypes`)."""

    fuses = False

    def forward(self, t_vis: Tensor, t_ir: Tensor) -> Tensor:
        raise RuntimeError(
            "SII kind 'none' does not fuse; skip stage 2 and use text_prototypes(), which keeps one "
            "prototype set per modality"
        )


def make_sii(kind: str, dim: int, heads: int = 8, dropout: float = 0.1) -> nn.Module:
    """Build an SII variant: ``"official" | "attention" | "mean" | "none"`` (``heads`` for attention only)."""
    if dim < 1:
        raise ValueError(f"SII dim must be >= 1, got {dim}")
    if kind == "official":
        return OfficialSII(dim, dropout)
    if kind == "attention":
        return AttentionSII(dim, heads, dropout)
    if kind == "mean":
        return MeanSII()
    if kind == "none":
        return NoSII()
    raise ValueError(f"unknown SII kind {kind!r}; choose one of {SII_KINDS}")


def text_prototypes(sii: nn.Module, t_vis: Tensor, t_ir: Tensor) -> dict[str, Tensor]:
    """Stage-3 text prototypes per image modality, each ``(num_ids, d)`` with row = label.

    A fusing SII gives the same fused features for both modalities; ``none`` gives visible images the
    visible prompts' features and infrared images the infrared ones. Computed once, without gradient and
    in eval mode (no dropout), restoring the module's mode afterwards. (The released code extracts them
    with the model still in training mode, i.e. with dropout active.)
    """
    _check_pair(t_vis, t_ir)
    if not sii.fuses:
        return {VISIBLE: t_vis.detach(), INFRARED: t_ir.detach()}
    was_training = sii.training
    sii.eval()
    try:
        with torch.no_grad():
            fused = sii(t_vis, t_ir)
    finally:
        sii.train(was_training)
    return {VISIBLE: fused, INFRARED: fused}
