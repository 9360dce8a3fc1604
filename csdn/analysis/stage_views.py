"""Tables and figures for the three training-stage notebooks (03 prompts, 04 SII, 05 HSE + re-ID).

Everything works on plain tensors, records and per-epoch histories (``Experiment.histories[stage]``),
so each view can be tested on small hand-made inputs. Figures are pyplot figures, as in
:mod:`csdn.analysis.data_views`: a notebook shows them with ``plt.show()``. (Creating one also loads the inline
backend, which the pyplot-free figures of :mod:`csdn.eval.plots` need to display in a fresh kernel.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from csdn.data.cache import decode_image
from csdn.data.records import INFRARED, MODALITIES, VISIBLE, Record
from csdn.eval.metrics import PROTOCOLS, SYSU_IGNORED_GALLERY_CAM, SYSU_QUERY_CAM
from csdn.eval.plots import plot_rank_list
from csdn.model.prompts import ModalityPrompts
from csdn.train.text_stages import CachedFeatures

History = Sequence[Mapping[str, float]]  # one dict of metrics per epoch, as in Experiment.histories

# -- training curves ---------------------------------------------------------------------------------


def history_frame(history: History) -> pd.DataFrame:
    """A stage's per-epoch metrics as a table indexed by epoch."""
    if not history:
        raise ValueError("the history is empty: the stage has not run (or has nothing to train)")
    frame = pd.DataFrame(list(history))
    if "epoch" not in frame:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    return frame.set_index("epoch")


def loss_keys(history: History) -> list[str]:
    """The loss columns of a history (``loss`` first, then the terms ``*_loss``)."""
    keys = history_frame(history).columns
    return [k for k in keys if k == "loss"] + sorted(k for k in keys if k.endswith("_loss"))


def validation_keys(history: History) -> list[str]:
    """The validation metrics of a history (``val_*``, the selection score left out)."""
    return sorted(k for k in history_frame(history).columns if k.startswith("val_") and k != "val_score")


def plot_history(history: History, title: str = "training") -> Figure:
    """Loss terms per epoch, and a second panel with the validation metrics when the history has any."""
    frame = history_frame(history)
    losses, metrics = loss_keys(history), validation_keys(history)
    if not losses:
        raise ValueError(f"the history has no loss column (columns: {list(frame.columns)})")
    fig = plt.figure(figsize=(10.0 if metrics else 5.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    for key in losses:
        axes[0].plot(frame.index, frame[key], marker="o", markersize=3, label=key, lw=2.5 if key == "loss" else 1.2)
    _decorate(axes[0], "loss", f"{title}: loss")
    for key in metrics:
        rows = frame[key].dropna()
        axes[1].plot(rows.index, 100 * rows, marker="o", label=key.removeprefix("val_"))
    if metrics:
        _decorate(axes[1], "validation (%)", f"{title}: validation")
    return fig


def plot_loss_curves(histories: Mapping[str, History], key: str = "loss", title: str = "loss") -> Figure:
    """One curve of ``key`` per named history (e.g. one per SII variant); empty histories are skipped."""
    drawn = {name: history_frame(h) for name, h in histories.items() if h}
    if not drawn:
        raise ValueError("plot_loss_curves needs at least one non-empty history")
    fig = plt.figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, frame in drawn.items():
        if key not in frame:
            raise ValueError(f"history {name!r} has no {key!r} column (columns: {list(frame.columns)})")
        ax.plot(frame.index, frame[key], marker="o", markersize=3, label=name)
    _decorate(ax, key, title)
    return fig


def _decorate(ax, ylabel: str, title: str) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


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
        raise ValueError(f"context (n_ctx, width) and token_embedding (vocab, width) must share the width, got "
                         f"{tuple(context.shape)} and {tuple(token_embedding.shape)}")
    ids = torch.arange(token_embedding.shape[0]) if candidates is None else torch.as_tensor(candidates).long().cpu()
    if not 1 <= k <= len(ids):
        raise ValueError(f"k must be in [1, {len(ids)}] (the number of candidate words), got {k}")
    vocab = F.normalize(token_embedding.detach().float().cpu()[ids], dim=1)
    cosine = F.normalize(context.detach().float().cpu(), dim=1) @ vocab.T
    top = cosine.topk(k, dim=1)
    return [[(tokenizer.decode([int(ids[j])]).strip(), float(c)) for c, j in zip(row_c, row_j)]
            for row_c, row_j in zip(top.values, top.indices)]


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
                rows.append({"pid": pid, "prompt": name, "token": position,
                             "nearest words": ", ".join(f"{w} ({c:.2f})" for w, c in nearest)})
    return pd.DataFrame(rows)


def similarity_by_identity(texts: Tensor, images: Tensor, labels: Tensor) -> Tensor:
    """Mean cosine ``(num_ids, num_ids)`` between identity ``i``'s text feature (row ``i`` of ``texts``)
    and the images of identity ``j`` (``labels`` are rows of ``texts``); NaN for an identity without images."""
    if texts.dim() != 2 or images.dim() != 2 or texts.shape[1] != images.shape[1]:
        raise ValueError(f"texts (num_ids, d) and images (N, d) must share d, got {tuple(texts.shape)} and "
                         f"{tuple(images.shape)}")
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
    return {(name, modality): similarity_by_identity(t, *images[modality])
            for name, t in texts.items() for modality in MODALITIES}


def similarity_table(matrices: Mapping[tuple[str, str], Tensor]) -> pd.DataFrame:
    """One row per (text, images) pair: mean cosine to the own identity's images, to others', and the margin."""
    rows = []
    for (text, images), matrix in matrices.items():
        own, other = own_and_other(matrix)
        rows.append({"text": text, "images": images, "own identity": own, "other identities": other,
                     "margin": own - other})
    return pd.DataFrame(rows).round(4)


def plot_similarity_heatmaps(matrices: Mapping[str, Tensor], max_ids: int = 24) -> Figure:
    """One identities x identities heatmap per named matrix (text rows, image columns, first ``max_ids``),
    two per row."""
    if not matrices:
        raise ValueError("plot_similarity_heatmaps needs at least one matrix")
    ncols = min(2, len(matrices))
    nrows = -(-len(matrices) // ncols)
    fig = plt.figure(figsize=(4.6 * ncols, 3.9 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (name, matrix) in zip(axes, matrices.items()):
        shown = matrix[:max_ids, :max_ids].numpy()
        image = ax.imshow(shown, cmap="viridis")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("images of identity")
        ax.set_ylabel("prompt of identity")
        fig.colorbar(image, ax=ax, shrink=0.8, label="mean cosine")
    for ax in axes[len(matrices):]:
        ax.axis("off")
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
    rows = [{"variant": "(visible vs infrared prompts)", "prototype for": "-",
             "cos to visible prompts": mean_cosine(t_vis, t_ir), "cos to infrared prompts": mean_cosine(t_vis, t_ir)}]
    for name, per_modality in prototypes.items():
        for modality in MODALITIES:
            rows.append({"variant": name, "prototype for": modality,
                         "cos to visible prompts": mean_cosine(per_modality[modality], t_vis),
                         "cos to infrared prompts": mean_cosine(per_modality[modality], t_ir)})
    return pd.DataFrame(rows).round(4)


def i2t_accuracy(images: Tensor, labels: Tensor, texts: Tensor) -> float:
    """Fraction of images whose most similar text feature (cosine) is their own identity's row of ``texts``."""
    labels = torch.as_tensor(labels).long().cpu()
    if images.dim() != 2 or texts.dim() != 2 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ValueError(f"need images (N>0, d), labels (N,) and texts (num_ids, d), got {tuple(images.shape)}, "
                         f"{tuple(labels.shape)} and {tuple(texts.shape)}")
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
        rows.append({"text": name,
                     "visible images": 100 * i2t_accuracy(feats.visible, feats.visible_labels, per_modality[VISIBLE]),
                     "infrared images": 100 * i2t_accuracy(feats.infrared, feats.infrared_labels,
                                                           per_modality[INFRARED])})
    return pd.DataFrame(rows).set_index("text").round(2)


# -- stage 3: rank lists ------------------------------------------------------------------------------


def trial_split(dataset: Any, layout: str, trial: int = 0, mode: str = "all",
               direction: str = "infrared->visible") -> tuple[list[Record], list[Record]]:
    """``(query, gallery)`` of one test trial of a reader of ``layout`` ("sysu", "llcm" or "regdb").

    SYSU-MM01: infrared queries against the ``mode`` gallery of ``trial``; LLCM: ``direction`` and
    ``trial``; RegDB: ``direction`` of the reader's own split.
    """
    if layout == "sysu":
        return list(dataset.query), list(dataset.gallery(trial, mode=mode))
    if layout == "llcm":
        return list(dataset.query(direction)), list(dataset.gallery(direction, trial))
    if layout == "regdb":
        query, gallery = dataset.query_gallery(direction)
        return list(query), list(gallery)
    raise ValueError(f"layout must be one of {PROTOCOLS}, got {layout!r}")


def allowed_gallery(query: Record, gallery: Sequence[Record], protocol: str) -> Tensor:
    """Boolean mask of the gallery entries the protocol ranks for ``query``: SYSU-MM01 drops camera 2
    for camera-3 queries, LLCM drops the query's own identity seen by its own camera number, RegDB
    keeps everything (the rules of :mod:`csdn.eval.metrics`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "sysu" and query.cam == SYSU_QUERY_CAM:
        return torch.tensor([g.cam != SYSU_IGNORED_GALLERY_CAM for g in gallery], dtype=torch.bool)
    if protocol == "llcm":
        return torch.tensor([not (g.pid == query.pid and g.cam == query.cam) for g in gallery], dtype=torch.bool)
    return torch.ones(len(gallery), dtype=torch.bool)


def top_matches(query_feature: Tensor, gallery_features: Tensor, allowed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices and dot-product scores of the ``k`` best allowed gallery entries, best first."""
    if query_feature.dim() != 1 or gallery_features.dim() != 2 or gallery_features.shape[1] != query_feature.shape[0]:
        raise ValueError(f"need a query feature (d,) and gallery features (M, d), got {tuple(query_feature.shape)} "
                         f"and {tuple(gallery_features.shape)}")
    if allowed.shape != (gallery_features.shape[0],):
        raise ValueError(f"allowed must be a mask of shape ({gallery_features.shape[0]},), got {tuple(allowed.shape)}")
    scores = gallery_features.float().cpu() @ query_feature.float().cpu()
    scores = scores.masked_fill(~allowed.cpu(), float("-inf"))
    k = min(k, int(allowed.sum()))
    if k < 1:
        raise ValueError("no gallery entry is allowed for this query")
    top = scores.topk(k)
    return top.indices, top.values


def pick_queries(query: Sequence[Record], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` queries of distinct identities (the first image of each), chosen reproducibly."""
    first: dict[int, int] = {}
    for i, record in enumerate(query):
        first.setdefault(record.pid, i)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sorted(first), size=min(n, len(first)), replace=False)
    return [first[int(pid)] for pid in chosen]


def plot_query_rank_list(
    query: Record,
    query_feature: Tensor,
    gallery: Sequence[Record],
    gallery_features: Tensor,
    protocol: str,
    size: tuple[int, int],
    k: int = 10,
    title: str | None = None,
) -> Figure:
    """A query image and its top-``k`` gallery images under ``protocol``'s rules, decoded at ``size``."""
    indices, scores = top_matches(query_feature, gallery_features, allowed_gallery(query, gallery, protocol), k)
    shown = [gallery[i] for i in indices.tolist()]
    return plot_rank_list(decode_image(query.path, size), [decode_image(g.path, size) for g in shown],
                          [g.pid == query.pid for g in shown], scores.tolist(), k=len(shown),
                          title=title or f"query pid {query.pid} cam {query.cam} ({query.modality})")
