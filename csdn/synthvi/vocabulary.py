"""The tokens the CLIP pool's captions use: the tiny CLIP pretrains a compact embedding table of only these.

open_clip's tokenizer has 49,408 tokens and SynthVI's captions use a few hundred of them. Pretraining the
full table costs a dense 49,408-row gradient, its zeroing and an AdamW update every step, for rows that
never receive a gradient. Those rows cannot move: the embedding is not weight-decayed (``_param_groups``),
so AdamW's update of a row whose gradient was always zero is exactly zero. Training only the used rows is
therefore the same training, bit for bit, and the rows go back into the full table afterwards.

Token ids are remapped in sorted order, so the end-of-text token (the largest id, which open_clip's text
pooling finds with ``argmax``) stays the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PoolVocabulary:
    """The sorted token ids ``used`` by a set of token tensors, and their compact ids ``0..len(used)-1``."""

    used: torch.Tensor  # (V,) sorted token ids that occur
    compact_ids: torch.Tensor  # (vocab_size,) compact id of every token id (-1: unused)

    @classmethod
    def of(cls, vocab_size: int, *tokens: torch.Tensor | None) -> PoolVocabulary:
        """The vocabulary of every id in ``tokens`` (None entries are skipped)."""
        used = torch.unique(torch.cat([t.flatten() for t in tokens if t is not None]))
        if used.numel() and (used[0] < 0 or used[-1] >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size}), got {int(used[0])}..{int(used[-1])}")
        compact_ids = torch.full((vocab_size,), -1, dtype=torch.long)
        compact_ids[used] = torch.arange(len(used))
        return cls(used, compact_ids)

    def compact(self, tokens: torch.Tensor | None) -> torch.Tensor | None:
        """``tokens`` in compact ids (same shape)."""
        return None if tokens is None else self.compact_ids[tokens]

    def compact_embedding(self, full: nn.Embedding) -> nn.Embedding:
        """A new embedding of the used rows of ``full`` (copied), indexed by compact ids."""
        compact = nn.Embedding(len(self.used), full.embedding_dim, device=full.weight.device, dtype=full.weight.dtype)
        with torch.no_grad():
            compact.weight.copy_(full.weight[self.used])
        return compact

    def write_back(self, compact: nn.Embedding, full: nn.Embedding) -> nn.Embedding:
        """``full`` with the trained rows of ``compact`` copied into their token ids (in place; returns it)."""
        with torch.no_grad():
            full.weight[self.used] = compact.weight.detach()
        return full
