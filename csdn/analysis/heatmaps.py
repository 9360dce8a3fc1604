"""Where a match comes from: maps of the query-gallery similarity over the query and the gallery images.

The method is **gradient x activation of the ranking similarity at the trunk's last spatial layer**
(Grad-CAM's ingredients without its spatial averaging; LayerCAM without its ReLU on the gradient). For a
query ``q`` and a gallery image ``g`` the ranking score is ``s = f(q) . f(g)``, with ``f`` exactly the
feature the evaluation ranks by: ``CSDNNet.embed`` (``concat(L2(BN(GeM(map))), L2(attention-pool(map)))``)
of the image and, with flip test-time augmentation, of its mirror, fused as ``eval.flip_fusion`` says. The
map of ``q`` at position ``(y, x)`` is ``relu(sum_c A_c(y, x) * ds/dA_c(y, x))`` with ``f(g)`` held fixed:
the first-order share of ``s`` carried by that position's activations ``A(y, x)`` (the mirror pass's share
is mirrored back and added). Why this and not the alternatives:

- the attention pool's attention weights show what the *projected* half of the feature pools, but not the
  GeM half, and not what either half has in common with the gallery image: they are the same for every
  gallery image, so they cannot say why one match outranks another;
- Grad-CAM averages the gradient over the positions first, which is exact for a linear pooling but not for
  GeM (``p=3`` weights a position by ``A^(p-1)``) nor for the attention pool; keeping the per-position
  gradient keeps each position's own share.

The tapped layer: ResNets (RN50, csdn-tiny-rn) the output of ``layer4``, the map both heads pool. ViTs:
the tokens *entering* the last transformer block, because the ranking feature is the class token after the
last block, which the patch tokens leaving it no longer feed (their gradient is zero). A ViT map is the
coarser answer: by the last block, attention has already mixed content across tokens, so a position's
share may belong to content that started elsewhere (``tests/test_heatmaps.py`` measures both towers).

:func:`similarity_maps` computes the maps of a query and its gallery images in two backward passes (each
image's feature depends on that image alone: the network is in eval mode); :func:`top_matches` ranks a
split's gallery for one query; :func:`plot_matches` draws queries and their top-k with the maps overlaid.
Deterministic: no randomness, the network in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from csdn.data.images import CachedImages
from csdn.data.records import Record
from csdn.data.transforms import test_transform
from csdn.model.network import CSDNNet
from csdn.style import MODALITY_COLOURS

HEATMAP_CMAP = "Purples"  # the maps' colours: purple, never the modality palette's orange or blue nor the
# rank lists' green (true match) and red (wrong identity)


@dataclass(frozen=True)
class MatchMaps:
    """A query, its gallery images and where each similarity comes from (maps at the images' size)."""

    query: np.ndarray  # (H, W, 3) uint8, the query as the network sees it (resized)
    gallery: list[np.ndarray]  # (H, W, 3) uint8 each, in rank order
    query_maps: np.ndarray  # (K, H, W) float >= 0: the query's map for each gallery image
    gallery_maps: np.ndarray  # (K, H, W) float >= 0: each gallery image's map for the query
    scores: np.ndarray  # (K,) the ranking similarities f(q) . f(g)
    matches: np.ndarray  # (K,) bool: the gallery image shows the query's identity
    query_modality: str  # "visible" or "infrared"
    gallery_modality: str


def _tap(net: CSDNNet) -> tuple[nn.Module, bool]:
    """The module whose activations are mapped, and whether its *input* (ViT) rather than output is taken."""
    trunk = net.trunk
    if hasattr(trunk, "layer4"):
        return trunk.layer4, False
    return trunk.transformer.resblocks[-1], True


def ranked_features(
    net: CSDNNet, images: Tensor, modality: str, flip: bool, flip_fusion: str
) -> tuple[Tensor, list[Tensor]]:
    """The evaluation's ranking features of ``images`` (with the graph kept) and the tapped activations of the
    plain and, with ``flip``, the mirrored pass (each (B, C, h, w) or ViT tokens)."""
    module, take_input = _tap(net)
    tapped: list[Tensor] = []

    def keep(tensor: Tensor) -> Tensor:  # the activations as a leaf: their gradient, whatever trains
        leaf = tensor.detach().requires_grad_(torch.is_grad_enabled())
        tapped.append(leaf)
        return leaf

    if take_input:
        handle = module.register_forward_pre_hook(lambda m, args: (keep(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: keep(out))
    try:
        plain = net.embed(images, modality)
        if not flip:
            return F.normalize(plain, dim=1), tapped
        mirrored = net.embed(torch.flip(images, dims=[3]), modality)
    finally:
        handle.remove()
    if flip_fusion == "concat":
        return torch.cat([plain, mirrored], dim=1), tapped
    return F.normalize(plain + mirrored, dim=1), tapped


def _contributions(net: CSDNNet, tapped: list[Tensor], grid: tuple[int, int]) -> Tensor:
    """relu(sum_c A * dA) per position, the mirror pass's flipped back and added: (B, h, w)."""
    total = None
    for i, activation in enumerate(tapped):
        a, g = activation, activation.grad
        if a.ndim == 3:  # ViT tokens
            a, g = _tokens_to_grid(net, a, grid), _tokens_to_grid(net, g, grid)
        share = (a * g).sum(dim=1)
        share = share.flip(-1) if i == 1 else share
        total = share if total is None else total + share
    return total.clamp(min=0)


def _tokens_to_grid(net: CSDNNet, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, C, h, w) patch grid of a ViT block's input tokens (the class token dropped)."""
    if not net.trunk.transformer.batch_first:
        tokens = tokens.transpose(0, 1)
    return tokens[:, 1:].reshape(len(tokens), *grid, -1).permute(0, 3, 1, 2)


def _patch_grid(net: CSDNNet, modality: str, size: tuple[int, int]) -> tuple[int, int]:
    """A ViT's patch grid for images of ``size``: the stem is its patch embedding, strided by the patch size."""
    stride = net.stem_for(modality)[0].stride
    return size[0] // stride[0], size[1] // stride[1]


def _maps_against(
    net: CSDNNet, images: Tensor, modality: str, partners: Tensor, flip: bool, flip_fusion: str
) -> tuple[Tensor, Tensor]:
    """Maps of ``images[i]`` for its similarity to the fixed feature ``partners[i]``; also the similarities."""
    features, tapped = ranked_features(net, images, modality, flip, flip_fusion)
    scores = (features * partners).sum(dim=1)
    scores.sum().backward()  # image i's score depends on image i alone (eval mode): one pass for all
    size = tuple(images.shape[-2:])
    maps = _contributions(net, tapped, _patch_grid(net, modality, size) if tapped[0].ndim == 3 else (0, 0))
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0], scores


def similarity_maps(
    net: CSDNNet,
    query: Tensor,
    query_modality: str,
    gallery: Tensor,
    gallery_modality: str,
    flip: bool = False,
    flip_fusion: str = "mean",
) -> tuple[Tensor, Tensor, Tensor]:
    """``(query_maps (K, H, W), gallery_maps (K, H, W), scores (K,))`` of one normalised query (3, H, W) against
    K normalised gallery images (K, 3, H, W): where in the query, and where in each gallery image, their
    ranking similarity comes from (module docstring). The network is put in eval mode and left so."""
    net.eval()
    device = next(net.parameters()).device
    query, gallery = query.to(device), gallery.to(device)
    with torch.enable_grad():
        with torch.no_grad():
            fq, _ = ranked_features(net, query[None], query_modality, flip, flip_fusion)
            fg, _ = ranked_features(net, gallery, gallery_modality, flip, flip_fusion)
        k = len(gallery)
        query_maps, scores = _maps_against(
            net, query[None].expand(k, -1, -1, -1), query_modality, fg, flip, flip_fusion
        )
        gallery_maps, _ = _maps_against(net, gallery, gallery_modality, fq.expand(k, -1), flip, flip_fusion)
    net.zero_grad(set_to_none=True)
    return query_maps.detach().cpu(), gallery_maps.detach().cpu(), scores.detach().cpu()


def mass_in(maps: Tensor, region: tuple[slice, slice]) -> Tensor:
    """The share of each map's total mass inside ``region`` (rows, columns): (K,)."""
    total = maps.flatten(1).sum(1).clamp(min=1e-12)
    return maps[:, region[0], region[1]].flatten(1).sum(1) / total


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """``image`` (H, W, 3 uint8) in grey with ``heat`` (H, W; scaled to its own maximum) laid over it in purple,
    more opaque where the map is higher: float RGB in [0, 1]."""
    import matplotlib

    scaled = heat / heat.max() if heat.max() > 0 else heat
    grey = np.repeat(image.astype(np.float32).mean(axis=2, keepdims=True) / 255, 3, axis=2)
    colours = matplotlib.colormaps[HEATMAP_CMAP](0.35 + 0.65 * scaled)[..., :3]
    weight = alpha * scaled[..., None]
    return (1 - weight) * grey + weight * colours


def plot_matches(rows: Sequence[tuple[str, MatchMaps]], title: str | None = None) -> Figure:
    """One row per ``(label, MatchMaps)``: the query with its map for the top-1, then each gallery image of the
    top-k with its map; the frame is the image's modality colour, a tick marks a true match."""
    k = max(len(m.gallery) for _, m in rows)
    figure = Figure(figsize=(1.25 * (k + 1) + 0.6, 2.55 * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), k + 1, squeeze=False)
    for (label, maps), line in zip(rows, axes):
        _panel(line[0], overlay(maps.query, maps.query_maps[0]), maps.query_modality, f"{label}\nquery (for #1)")
        for i, ax in enumerate(line[1:]):
            if i >= len(maps.gallery):
                ax.set_axis_off()
                continue
            mark = "\u2713 " if maps.matches[i] else "\u2717 "
            text = f"{mark}#{i + 1}  s={maps.scores[i]:.3f}"
            _panel(ax, overlay(maps.gallery[i], maps.gallery_maps[i]), maps.gallery_modality, text)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _panel(ax, image: np.ndarray, modality: str, text: str) -> None:
    ax.imshow(np.clip(image, 0, 1))
    ax.set_title(text, fontsize=7.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(MODALITY_COLOURS[modality])
        spine.set_linewidth(2.5)


def record_maps(experiment, net: CSDNNet, query: Record, gallery: Sequence[Record]) -> MatchMaps:
    """:class:`MatchMaps` of ``query`` against ``gallery`` (records, in rank order) for ``net`` of ``experiment``:
    the images as its evaluation reads them (image cache, test transform, ``eval.flip`` / ``eval.flip_fusion``)."""
    cache = experiment.image_cache([query, *gallery])
    transform = test_transform(experiment.transforms)
    images = CachedImages(cache, transform=transform)
    tensors = torch.stack([torch.as_tensor(images[i][0]) for i in range(len(cache))])
    e = experiment.cfg.eval
    q_maps, g_maps, scores = similarity_maps(
        net, tensors[0], query.modality, tensors[1:], gallery[0].modality, flip=e.flip, flip_fusion=e.flip_fusion
    )
    return MatchMaps(
        query=np.asarray(cache[0]),
        gallery=[np.asarray(cache[i]) for i in range(1, len(cache))],
        query_maps=q_maps.numpy(),
        gallery_maps=g_maps.numpy(),
        scores=scores.numpy(),
        matches=np.array([r.pid == query.pid for r in gallery]),
        query_modality=query.modality,
        gallery_modality=gallery[0].modality,
    )


def top_gallery(scores: Tensor, query: Record, gallery: Sequence[Record], rules, k: int) -> list[Record]:
    """The top-``k`` of ``gallery`` for one query by ``scores`` (G,), under the protocol's gallery ``rules``."""
    kept = rules.kept(query, gallery)
    order = [int(i) for i in torch.sort(-scores, stable=True).indices if kept[i]]
    return [gallery[i] for i in order[:k]]


def query_maps(
    experiment, net: CSDNNet, split, queries: Sequence[int], k: int, trial: int | None = None
) -> list[MatchMaps]:
    """Each query of ``split`` (indices ``queries``) with its top-``k`` gallery of ``trial`` ranked by ``net``'s
    evaluation features, and their maps."""
    gallery = split.gallery(trial)
    features_of = experiment.features_of(net.embed, net)
    chosen = [split.query[i] for i in queries]
    q, g = features_of(chosen), features_of(gallery)
    out = []
    for row, record in enumerate(chosen):
        top = top_gallery(q[row] @ g.T, record, gallery, split.rules, k)
        out.append(record_maps(experiment, net, record, top))
    return out


def maps_of(experiment, net: CSDNNet):
    """``(query, gallery) -> MatchMaps`` of ``net`` (for the inspector's heatmap toggle)."""
    return lambda query, gallery: record_maps(experiment, net, query, list(gallery))
