"""What the text side learned: stage 1's prompts (their context tokens' nearest words, text-image similarity per
identity and modality) and stage 2's fusion (how far the prototypes move from the prompts, image-to-text
retrieval). Everything works on plain tensors, so each view can be tested on small hand-made inputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from csdn.data.records import INFRARED, MODALITIES, VISIBLE
from csdn.model.prompts import ModalityPrompts
from csdn.style import integer_ticks
from csdn.train.text_stages import CachedFeatures

# -- stage 1: what the prompts learned ---------------------------------------------------------------


def word_token_ids(tokenizer: Any, words: Iterable[str]) -> Tensor:
    """Sorted ids of the ``words`` that are a single token of ``tokenizer`` (open_clip style); the
    candidates for :func:`nearest_words` (e.g. the vocabulary of a dataset's captions)."""
    ids = set()
    for word in {w.strip(".,;:!?\"'()").lower() for w in words} - {""}:
        tokens = tokenizer([word])[0]
        tokens = tokens[tokens != 0]
        if tokens.numel() == 3:  # start, the word, end
            ids.add(int(tokens[1]))
    if not ids:
        raise ValueError("none of the words is a single token of the tokenizer")
    return torch.tensor(sorted(ids))


def nearest_words(
    context: Tensor, token_embedding: Tensor, tokenizer: Any, k: int = 3, candidates: Tensor | None = None
) -> list[list[tuple[str, float]]]:
    """For each context vector ``(n_ctx, width)``, the ``k`` vocabulary words whose token embedding
    ``(vocab, width)`` is closest by cosine, as ``(word, cosine)`` best first.

    ``candidates`` restricts the search to those token ids; words are decoded with ``tokenizer.decode``.
    """
    if context.dim() != 2 or token_embedding.dim() != 2 or context.shape[1] != token_embedding.shape[1]:
        raise ValueError(
            f"context (n_ctx, width) and token_embedding (vocab, width) must share the width, got "
            f"{tuple(context.shape)} and {tuple(token_embedding.shape)}"
        )
    ids = torch.arange(token_embedding.shape[0]) if candidates is None else torch.as_tensor(candidates).long().cpu()
    if not 1 <= k <= len(ids):
        raise ValueError(f"k must be in [1, {len(ids)}] (the number of candidate words), got {k}")
    vocab = F.normalize(token_embedding.detach().float().cpu()[ids], dim=1)
    cosine = F.normalize(context.detach().float().cpu(), dim=1) @ vocab.T
    top = cosine.topk(k, dim=1)
    return [
        [(tokenizer.decode([int(ids[j])]).strip(), float(c)) for c, j in zip(row_c, row_j)]
        for row_c, row_j in zip(top.values, top.indices)
    ]


def context_words_frame(
    prompts: ModalityPrompts,
    token_embedding: Tensor,
    tokenizer: Any,
    labels: Sequence[int],
    pids: Sequence[int] | None = None,
    k: int = 3,
    candidates: Tensor | None = None,
) -> pd.DataFrame:
    """One row per (identity, learner, context token): the ``k`` nearest words with their cosines.

    ``labels`` are training labels (rows of the learners); ``pids`` the dataset identities to show for them.
    """
    pids = list(labels) if pids is None else list(pids)
    if len(pids) != len(labels):
        raise ValueError(f"pids ({len(pids)}) must align with labels ({len(labels)})")
    rows = []
    for label, pid in zip(labels, pids):
        for name, learner in prompts.learners.items():
            words = nearest_words(learner.context[label], token_embedding, tokenizer, k, candidates)
            for position, nearest in enumerate(words, start=1):
                rows.append(
                    {
                        "pid": pid,
                        "prompt": name,
                        "token": position,
                        "nearest words": ", ".join(f"{w} ({c:.2f})" for w, c in nearest),
                    }
                )
    return pd.DataFrame(rows)


def similarity_by_identity(texts: Tensor, images: Tensor, labels: Tensor) -> Tensor:
    """Mean cosine ``(num_ids, num_ids)`` between identity ``i``'s text feature (row ``i`` of ``texts``)
    and the images of identity ``j`` (``labels`` are rows of ``texts``); NaN for an identity without images."""
    if texts.dim() != 2 or images.dim() != 2 or texts.shape[1] != images.shape[1]:
        raise ValueError(
            f"texts (num_ids, d) and images (N, d) must share d, got {tuple(texts.shape)} and {tuple(images.shape)}"
        )
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), one per image, got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= texts.shape[0]):
        raise ValueError(f"labels must lie in [0, {texts.shape[0]}) (rows of texts)")
    cosine = F.normalize(texts.detach().float().cpu(), dim=1) @ F.normalize(images.detach().float().cpu(), dim=1).T
    n = texts.shape[0]
    sums = torch.zeros(n, n).index_add_(1, labels, cosine)
    counts = torch.bincount(labels, minlength=n).float()
    return sums / counts  # 0 / 0 -> NaN for identities without images


def own_and_other(matrix: Tensor) -> tuple[float, float]:
    """Mean of the diagonal (own identity) and of the off-diagonal (other identities), NaNs ignored."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"need a square matrix of at least 2 x 2, got {tuple(matrix.shape)}")
    own = torch.diagonal(matrix)
    other = matrix[~torch.eye(matrix.shape[0], dtype=torch.bool)]
    return float(own.nanmean()), float(other.nanmean())


def modality_similarities(texts: Mapping[str, Tensor], feats: CachedFeatures) -> dict[tuple[str, str], Tensor]:
    """:func:`similarity_by_identity` for every (text source, image modality) pair."""
    images = {VISIBLE: (feats.visible, feats.visible_labels), INFRARED: (feats.infrared, feats.infrared_labels)}
    return {
        (name, modality): similarity_by_identity(t, *images[modality])
        for name, t in texts.items()
        for modality in MODALITIES
    }


def similarity_table(matrices: Mapping[tuple[str, str], Tensor]) -> pd.DataFrame:
    """One row per (text, images) pair: mean cosine to the own identity's images, to others', and the margin."""
    rows = []
    for (text, images), matrix in matrices.items():
        own, other = own_and_other(matrix)
        rows.append(
            {"text": text, "images": images, "own identity": own, "other identities": other, "margin": own - other}
        )
    return pd.DataFrame(rows).round(4)


def plot_similarity_heatmaps(matrices: Mapping[str, Tensor], max_ids: int = 24, centre: bool = True) -> Figure:
    """One identities x identities heatmap per named matrix (text rows, image columns, first ``max_ids``),
    two per row, all on one colour scale (symmetric about 0 when centred) so that panels compare. With
    ``centre`` the matrix is double-centred (over all identities, before cropping to
    ``max_ids``): each column's and each row's mean is subtracted and the grand mean added back. Some
    images are more similar to every prompt than others (vertical stripes), and some prompts to every
    image (horizontal stripes); centred, what is left is how much more a prompt and an identity's images
    go together than their averages say, and prompts that pick out their identities show as a bright
    diagonal."""
    if not matrices:
        raise ValueError("plot_similarity_heatmaps needs at least one matrix")
    shown = {}
    for name, matrix in matrices.items():
        if centre:
            matrix = matrix - matrix.mean(0, keepdim=True) - matrix.mean(1, keepdim=True) + matrix.mean()
        shown[name] = matrix[:max_ids, :max_ids].numpy()
    if centre:  # one scale for every panel, symmetric about 0 (centred values are signed)
        top = max(float(abs(v).max()) for v in shown.values()) or 1.0
        limits = (-top, top)
    else:
        limits = (min(float(v.min()) for v in shown.values()), max(float(v.max()) for v in shown.values()))
    ncols = min(2, len(matrices))
    nrows = -(-len(matrices) // ncols)
    fig = plt.figure(figsize=(4.2 * ncols + 1.0, 3.9 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (name, values) in zip(axes, shown.items()):
        image = ax.imshow(values, cmap="viridis", vmin=limits[0], vmax=limits[1])
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("images of identity")
        ax.set_ylabel("prompt of identity")
        integer_ticks(ax, "both")
    for ax in axes[len(matrices) :]:
        ax.axis("off")
    label = "mean cosine, double-centred (one scale for all panels)" if centre else "mean cosine (one scale)"
    fig.colorbar(image, ax=axes[: len(matrices)], shrink=0.6, label=label)
    return fig


# -- stage 2: what the fusion does -------------------------------------------------------------------


def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean row-wise cosine between two ``(n, d)`` tensors."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"need two (n, d) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(F.cosine_similarity(a.detach().float().cpu(), b.detach().float().cpu(), dim=1).mean())


def fusion_shift_table(prototypes: Mapping[str, Mapping[str, Tensor]], t_vis: Tensor, t_ir: Tensor) -> pd.DataFrame:
    """How far each variant's prototypes move from the visible and infrared prompt features (mean cosine).

    ``prototypes`` maps a variant name to its per-modality prototypes (``csdn.model.sii.text_prototypes``):
    one row per (variant, image modality the prototype serves). The first row is the reference
    cosine between the two prompt features themselves.
    """
    rows = [
        {
            "variant": "(visible vs infrared prompts)",
            "prototype for": "-",
            "cos to visible prompts": mean_cosine(t_vis, t_ir),
            "cos to infrared prompts": mean_cosine(t_vis, t_ir),
        }
    ]
    for name, per_modality in prototypes.items():
        shared = torch.equal(per_modality[MODALITIES[0]], per_modality[MODALITIES[1]])  # a fusion: one text
        for modality in MODALITIES[:1] if shared else MODALITIES:
            rows.append(
                {
                    "variant": name,
                    "prototype for": "both modalities" if shared else modality,
                    "cos to visible prompts": mean_cosine(per_modality[modality], t_vis),
                    "cos to infrared prompts": mean_cosine(per_modality[modality], t_ir),
                }
            )
    return pd.DataFrame(rows).round(4)


def i2t_accuracy(images: Tensor, labels: Tensor, texts: Tensor) -> float:
    """Fraction of images whose most similar text feature (cosine) is their own identity's row of ``texts``."""
    labels = torch.as_tensor(labels).long().cpu()
    if images.dim() != 2 or texts.dim() != 2 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ValueError(
            f"need images (N>0, d), labels (N,) and texts (num_ids, d), got {tuple(images.shape)}, "
            f"{tuple(labels.shape)} and {tuple(texts.shape)}"
        )
    cosine = F.normalize(images.detach().float().cpu(), dim=1) @ F.normalize(texts.detach().float().cpu(), dim=1).T
    return float((cosine.argmax(dim=1) == labels).float().mean())


def retrieval_table(texts: Mapping[str, Tensor | Mapping[str, Tensor]], feats: CachedFeatures) -> pd.DataFrame:
    """i2t accuracy (%) of each text source against visible and infrared images.

    A source is one ``(num_ids, d)`` tensor for both image modalities, or a per-modality mapping (the
    prototypes of SII ``none`` serve each modality with its own prompts).
    """
    rows = []
    for name, source in texts.items():
        per_modality = source if isinstance(source, Mapping) else {m: source for m in MODALITIES}
        rows.append(
            {
                "text": name,
                "visible images": 100 * i2t_accuracy(feats.visible, feats.visible_labels, per_modality[VISIBLE]),
                "infrared images": 100 * i2t_accuracy(feats.infrared, feats.infrared_labels, per_modality[INFRARED]),
            }
        )
    return pd.DataFrame(rows).set_index("text").round(2)
