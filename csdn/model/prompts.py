"""Modality-specific prompt learners: per-identity learnable context tokens inside a fixed sentence.

CSDN (like CLIP-ReID, its precursor) describes each training identity with a sentence whose placeholder
words ``X X X X`` are replaced by learnable token embeddings, e.g. ``"A visible photo of a X X X X
person."``; the sentence goes through CLIP's frozen text encoder and the EOT feature is the identity's text
feature. CSDN keeps two learners, one per modality. The released code uses ``"A photo of a X X X X
person."`` for both; the paper words them per modality. Both wordings are available (:func:`template_for`).

Unlike CLIP-ReID's code, which assumes the context starts right after ``SOT + 4`` tokens, the learner
finds the placeholder tokens in the tokenised sentence, so any wording (``"An infrared photo of a"`` is
six tokens) places the context correctly.

A text encoder here is any callable ``(prompt_embeddings (B, L, width), eot_indices (B,)) -> (B, embed_dim)``
(``csdn.clip.adapt.TextEncoder`` wraps an open_clip model's frozen text tower this way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from csdn.data.records import INFRARED, MODALITIES, VISIBLE

PAPER_VISIBLE = "A visible photo of a X X X X person."  # the paper's visible-prompt wording
PAPER_INFRARED = "An infrared photo of a X X X X person."  # the paper's infrared-prompt wording
RELEASED = "A photo of a X X X X person."  # the released code's wording, for both modalities (and CLIP-ReID's)
WORDINGS = ("paper", "released")
SHARED = "shared"  # the key of the single learner of the CLIP-ReID baseline

TextEncoderFn = Callable[[Tensor, Tensor], Tensor]
Tokenizer = Callable[..., Tensor]  # open_clip style: tokenizer(texts, context_length=...) -> (n, L) long


@dataclass(frozen=True)
class PromptTemplate:
    """A sentence whose consecutive placeholder words stand for the learnable context tokens."""

    text: str  # the wording, e.g. "A photo of a X X X X person."
    placeholder: str = "X"  # the whole word that marks one learnable token

    def __post_init__(self) -> None:
        positions = [i for i, word in enumerate(self.text.split()) if word == self.placeholder]
        if not positions:
            raise ValueError(f"prompt template {self.text!r} has no placeholder word {self.placeholder!r}")
        if positions != list(range(positions[0], positions[0] + len(positions))):
            raise ValueError(f"prompt template {self.text!r}: the placeholder words must be consecutive")

    @property
    def n_ctx(self) -> int:
        """Number of learnable context tokens (placeholder words)."""
        return self.text.split().count(self.placeholder)

    def with_n_ctx(self, n_ctx: int) -> PromptTemplate:
        """The same wording with ``n_ctx`` placeholder words."""
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        return PromptTemplate(self._join([self.placeholder] * n_ctx), self.placeholder)

    def filled(self, words: Sequence[str]) -> str:
        """The sentence with the placeholders replaced by ``words`` (one word per context token)."""
        if len(words) != self.n_ctx:
            raise ValueError(f"template {self.text!r} needs {self.n_ctx} words, got {len(words)}")
        return self._join(list(words))

    def _join(self, middle: list[str]) -> str:
        words = self.text.split()
        first = words.index(self.placeholder)
        return " ".join(words[:first] + middle + words[first + self.n_ctx :])


def template_for(modality: str, wording: str = "paper", n_ctx: int = 4) -> PromptTemplate:
    """The prompt template of one modality: the paper's modality wording or the released code's shared one."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    if wording == "released":
        text = RELEASED
    else:
        text = PAPER_VISIBLE if modality == VISIBLE else PAPER_INFRARED
    return PromptTemplate(text).with_n_ctx(n_ctx)


def _placeholder_token(tokenizer: Tokenizer, placeholder: str) -> int:
    ids = tokenizer([placeholder], context_length=8)[0]
    ids = ids[ids != 0]
    if ids.numel() != 3:  # SOT, the word, EOT
        raise ValueError(f"placeholder {placeholder!r} must tokenise to a single token, got {ids.tolist()}")
    return int(ids[1])


class PromptLearner(nn.Module):
    """Learnable context tokens per identity, set into a fixed tokenised template.

    ``context`` ``(num_ids, n_ctx, width)`` is the only parameter (init N(0, init_std), 0.02 in CLIP-ReID and
    CSDN). The token embeddings before and after the placeholders are fixed buffers, computed once from the
    (frozen) CLIP token embedding. ``forward(labels)`` returns the prompt embeddings ``(B, L, width)`` and the
    EOT positions ``(B,)`` to feed a text encoder.
    """

    def __init__(
        self,
        num_ids: int,
        template: str | PromptTemplate,
        n_ctx: int = 4,
        *,
        token_embedding: nn.Embedding,
        tokenizer: Tokenizer,
        context_length: int,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        template = template if isinstance(template, PromptTemplate) else PromptTemplate(template)
        if num_ids < 1:
            raise ValueError(f"num_ids must be >= 1, got {num_ids}")
        if template.n_ctx != n_ctx:
            raise ValueError(f"template {template.text!r} has {template.n_ctx} placeholders but n_ctx={n_ctx}")
        self.template = template
        self.num_ids = num_ids
        self.n_ctx = n_ctx

        token_ids = self._tokenise(template, tokenizer, context_length)
        start = self._context_start(token_ids, _placeholder_token(tokenizer, template.placeholder), template)
        self.eot_index = int(token_ids.argmax())  # open_clip convention: EOT has the largest token id
        eot_id = getattr(tokenizer, "eot_token_id", None)
        if eot_id is not None and int(token_ids[self.eot_index]) != eot_id:
            raise ValueError(f"the tokenizer's EOT id {eot_id} is not the largest id of {template.text!r}")

        weight = token_embedding.weight
        with torch.no_grad():
            embedded = token_embedding(token_ids.to(weight.device)[None]).detach()
        self.register_buffer("token_ids", token_ids[None])  # (1, L), kept for inspection and checkpoints
        self.register_buffer("token_prefix", embedded[:, :start].clone())  # SOT and the words before X
        self.register_buffer("token_suffix", embedded[:, start + n_ctx :].clone())  # words after X, EOT, padding
        context = torch.empty(num_ids, n_ctx, weight.shape[1], dtype=weight.dtype)  # drawn on CPU: seedable anywhere
        nn.init.normal_(context, std=init_std, generator=generator)
        self.context = nn.Parameter(context.to(weight.device))

    @staticmethod
    def _tokenise(template: PromptTemplate, tokenizer: Tokenizer, context_length: int) -> Tensor:
        # One spare slot: the template fits when that slot stays padding.
        ids = tokenizer([template.text], context_length=context_length + 1)[0]
        if ids[context_length] != 0:
            raise ValueError(f"prompt template {template.text!r} is longer than the context length {context_length}")
        return ids[:context_length].long()

    @staticmethod
    def _context_start(token_ids: Tensor, placeholder_id: int, template: PromptTemplate) -> int:
        positions = torch.nonzero(token_ids == placeholder_id).flatten().tolist()
        expected = list(range(positions[0], positions[0] + template.n_ctx)) if positions else []
        if positions != expected:
            raise ValueError(
                f"prompt template {template.text!r}: expected {template.n_ctx} consecutive placeholder tokens, "
                f"found them at {positions} (does another word tokenise like {template.placeholder!r}?)"
            )
        return positions[0]

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Prompt embeddings ``(B, L, width)`` and EOT positions ``(B,)`` for identities ``labels`` ``(B,)``."""
        if labels.dim() != 1:
            raise ValueError(f"labels must be (B,), got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_ids):
            raise ValueError(f"labels must lie in [0, {self.num_ids}), got [{int(labels.min())}, {int(labels.max())}]")
        labels = labels.to(self.context.device)
        b = labels.shape[0]
        prompts = torch.cat(
            [self.token_prefix.expand(b, -1, -1), self.context[labels], self.token_suffix.expand(b, -1, -1)], dim=1
        )
        eot = torch.full((b,), self.eot_index, dtype=torch.long, device=labels.device)
        return prompts, eot


class ModalityPrompts(nn.Module):
    """CSDN's pair of prompt learners (visible, infrared), or one shared learner (the CLIP-ReID baseline).

    Holds no text encoder: the frozen encoder is passed to each call, so a checkpoint of this module is
    just the learned context (and the template buffers).
    """

    def __init__(self, learners: Mapping[str, PromptLearner]) -> None:
        super().__init__()
        keys = set(learners)
        if keys not in ({VISIBLE, INFRARED}, {SHARED}):
            raise ValueError(f"learners must be keyed {VISIBLE!r} and {INFRARED!r}, or {SHARED!r}; got {sorted(keys)}")
        sizes = {learner.num_ids for learner in learners.values()}
        if len(sizes) != 1:
            raise ValueError(f"all learners must describe the same identities, got num_ids {sorted(sizes)}")
        self.learners = nn.ModuleDict(dict(learners))

    @classmethod
    def build(
        cls,
        num_ids: int,
        *,
        shared: bool,
        wording: str,
        token_embedding: nn.Embedding,
        tokenizer: Tokenizer,
        context_length: int,
        n_ctx: int = 4,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> ModalityPrompts:
        """Two modality learners worded by ``wording`` ("paper" | "released"), or with ``shared=True`` one
        learner with the released (modality-neutral) wording whatever ``wording`` says."""
        common = dict(
            token_embedding=token_embedding,
            tokenizer=tokenizer,
            context_length=context_length,
            init_std=init_std,
            generator=generator,
        )
        if shared:
            template = PromptTemplate(RELEASED).with_n_ctx(n_ctx)
            return cls({SHARED: PromptLearner(num_ids, template, n_ctx, **common)})
        return cls({m: PromptLearner(num_ids, template_for(m, wording, n_ctx), n_ctx, **common) for m in MODALITIES})

    @property
    def shared(self) -> bool:
        """True for the single-learner (CLIP-ReID) configuration."""
        return SHARED in self.learners

    @property
    def num_ids(self) -> int:
        return next(iter(self.learners.values())).num_ids

    def learner(self, modality: str) -> PromptLearner:
        """The learner describing ``modality`` (the shared one serves both)."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return self.learners[SHARED if self.shared else modality]

    def forward(self, labels: Tensor, modality: str, text_encoder: TextEncoderFn) -> Tensor:
        """Text features ``(B, embed_dim)`` of identities ``labels`` in ``modality``'s prompts (with gradient)."""
        prompts, eot = self.learner(modality)(labels)
        return text_encoder(prompts, eot)

    @torch.no_grad()
    def all_text_features(self, text_encoder: TextEncoderFn, modality: str, batch_size: int = 256) -> Tensor:
        """Text features of every identity ``(num_ids, embed_dim)``, row = label, without gradient."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        learner = self.learner(modality)
        labels = torch.arange(self.num_ids, device=learner.context.device)
        return torch.cat([self(chunk, modality, text_encoder) for chunk in labels.split(batch_size)])
