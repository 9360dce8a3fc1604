"""CSDN's training losses: supervised contrastive (stages 1-2), ID, triplet and HSE (stage 3).

Each loss follows what the authors' released code computes (CSDN ``tools/loss.py`` and ``core/train.py``,
which take SupConLoss from CLIP-ReID and TripletLoss_WRT from AGW); where we deviate for numerical
robustness the docstring says so. Every function returns a scalar tensor averaged over anchors.

Conventions shared by all functions: features are ``(N, d)`` float tensors, labels ``(N,)`` integer
tensors; nothing is L2-normalised unless a docstring says so (the released code normalises nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_features_labels(name: str, features: Tensor, labels: Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"{name}: features must be (N, d), got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}: labels must be (N,) with N={features.shape[0]} matching the features, "
            f"got shape {tuple(labels.shape)}"
        )


# --------------------------------------------------------------------------------------------------------
# Supervised contrastive loss between two sides (image <-> text), stages 1 and 2
# --------------------------------------------------------------------------------------------------------


def supcon_loss(
    features: Tensor,
    prototypes_features: Tensor,
    labels_a: Tensor,
    labels_b: Tensor,
    temperature: float = 1.0,
    cosine: bool = False,
) -> Tensor:
    """Supervised contrastive loss of anchors (rows) against the other side (columns), as CLIP-ReID's SupConLoss.

    ``logits = features @ prototypes_features.T / temperature``; for every anchor ``i`` the loss is minus the
    mean, over the columns ``j`` with ``labels_b[j] == labels_a[i]``, of ``log_softmax(logits[i])[j]``;
    the result is the mean over anchors. Raw dot products (no normalisation) and temperature 1 are what
    CLIP-ReID and CSDN use. The i2t and t2i directions are two calls with the arguments swapped
    (see :func:`i2t_t2i_loss`). ``cosine=True`` L2-normalises both sides first. Every anchor needs at
    least one positive column (the released code would silently return NaN); a ValueError names the
    offending rows otherwise.
    """
    _check_features_labels("supcon_loss (anchors)", features, labels_a)
    _check_features_labels("supcon_loss (columns)", prototypes_features, labels_b)
    if features.shape[1] != prototypes_features.shape[1]:
        raise ValueError(f"supcon_loss: anchor dim {features.shape[1]} != column dim {prototypes_features.shape[1]}")
    positives = (labels_a[:, None] == labels_b[None, :]).to(features.dtype)
    n_pos = positives.sum(dim=1)
    if bool((n_pos == 0).any()):
        rows = torch.nonzero(n_pos == 0).flatten().tolist()
        raise ValueError(
            f"supcon_loss: anchor rows {rows[:10]} have no column with the same label; "
            "build the other side from the anchors' labels"
        )
    log_prob = torch.log_softmax(similarity_logits(features, prototypes_features, temperature, cosine), dim=1)
    mean_log_prob_pos = (positives * log_prob).sum(dim=1) / n_pos
    return -mean_log_prob_pos.mean()


def i2t_t2i_loss(
    image_feats: Tensor,
    image_labels: Tensor,
    text_feats: Tensor,
    text_labels: Tensor,
    temperature: float = 1.0,
    cosine: bool = False,
) -> Tensor:
    """Image-to-text plus text-to-image supervised contrastive loss (the stage-1 and stage-2 objective)."""
    i2t = supcon_loss(image_feats, text_feats, image_labels, text_labels, temperature, cosine)
    t2i = supcon_loss(text_feats, image_feats, text_labels, image_labels, temperature, cosine)
    return i2t + t2i


# --------------------------------------------------------------------------------------------------------
# Identity classification and HSE, stage 3
# --------------------------------------------------------------------------------------------------------


def id_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of classifier logits ``(N, num_ids)``; optional label smoothing.

    ``label_smoothing=eps`` gives targets ``(1 - eps) * onehot + eps / num_ids``, which is exactly the
    CrossEntropyLabelSmooth of the re-ID code bases. The released CSDN training uses ``eps = 0``.
    """
    _check_features_labels("id_loss", logits, labels)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"id_loss: label_smoothing must be in [0, 1), got {label_smoothing}")
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def similarity_logits(a: Tensor, b: Tensor, temperature: float = 1.0, cosine: bool = False) -> Tensor:
    """``a @ b.T / temperature``; with ``cosine=True`` both sides are L2-normalised first.

    Raw dot products at temperature 1 are what the released code uses in stages 1-3; cosine logits
    with a CLIP-like temperature cannot be lowered by shrinking the features (see ``hse_loss``).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if cosine:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return a @ b.T / temperature


def hse_loss(
    image_proj_feats: Tensor, text_prototypes: Tensor, labels: Tensor, temperature: float = 1.0, cosine: bool = False
) -> Tensor:
    """High-level Semantic Embedding loss: ``CE(image_proj_feats @ text_prototypes.T / temperature, labels)``.

    ``text_prototypes`` is ``(num_ids, d)``: one frozen (fused) text feature per training identity, row =
    label. As in the released CSDN code (and CLIP-ReID's stage-2 i2t loss) the default logits are raw dot
    products of the un-normalised projected image features and text features, with no temperature and no
    label smoothing. With raw logits a wrongly placed feature can lower the loss towards ``ln(num_ids)``
    by shrinking its norm; ``cosine=True`` (with a CLIP-like ``temperature`` such as 0.07) removes that
    escape. The stage-3 weights (0.05 visible, 0.1 infrared) are applied by the caller.
    """
    _check_features_labels("hse_loss", image_proj_feats, labels)
    if text_prototypes.dim() != 2 or text_prototypes.shape[1] != image_proj_feats.shape[1]:
        raise ValueError(
            f"hse_loss: text_prototypes must be (num_ids, {image_proj_feats.shape[1]}), "
            f"got shape {tuple(text_prototypes.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= text_prototypes.shape[0]):
        raise ValueError(
            f"hse_loss: labels must lie in [0, {text_prototypes.shape[0]}) (one prototype per identity), "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return F.cross_entropy(similarity_logits(image_proj_feats, text_prototypes, temperature, cosine), labels)


# --------------------------------------------------------------------------------------------------------
# Triplet losses, stage 3
# --------------------------------------------------------------------------------------------------------


def pairwise_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distance matrix ``(M, N)``; squared distances are clamped at 1e-12 before the square root,
    as in the AGW/CSDN code, so the gradient stays finite where two points coincide."""
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None, :] - 2.0 * x @ y.T
    return sq.clamp(min=1e-12).sqrt()


def _triplet_inputs(name: str, features: Tensor, labels: Tensor, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Distance matrix and the positive / negative masks (the diagonal counts as a positive, as in AGW)."""
    _check_features_labels(name, features, labels)
    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean(features, features)
    is_pos = labels[:, None] == labels[None, :]
    is_neg = ~is_pos
    if not bool(is_neg.any(dim=1).all()):
        raise ValueError(f"{name}: every anchor needs a negative; the batch holds a single identity")
    return dist, is_pos, is_neg


WRT_WEIGHTS = ("exact", "agw")


def triplet_wrt(features: Tensor, labels: Tensor, normalize: bool = False, weights: str = "exact") -> Tensor:
    """Weighted-regularisation triplet loss (AGW's TripletLoss_WRT, used by CSDN on both stage-3 features).

    For each anchor, positive distances are averaged with weights ``softmax(d_ap)`` over its positives
    (the anchor itself included, as in AGW) and negative distances with weights ``softmax(-d_an)`` over its
    negatives; the loss is the soft margin ``softplus(d_ap_weighted - d_an_weighted)`` averaged over
    anchors (``nn.SoftMarginLoss`` with target 1). Distances are Euclidean on the raw features:
    CSDN calls it with AGW's default ``normalize_feature=False``; ``normalize=True`` L2-normalises first.

    ``weights="exact"``: masked softmaxes. ``weights="agw"``: AGW's ``softmax_weights``, which the release
    uses: the shift is the row maximum of the *masked* matrix (zeros included) and 1e-6 joins the
    normaliser. For positives this changes nothing measurable; for negatives the shift is 0 instead of
    ``-min d_an``, so once the closest negatives lie beyond about 10-14 the weights ``exp(-d_an)`` fall
    below the 1e-6, the weighted negative distance collapses towards 0 and the loss becomes about the
    weighted positive distance. Measured on 16 features of 4 identities (``tests/test_fidelity.py``, against the
    release's own values): relative difference of the loss to ``"exact"`` 1e-6 at a median negative distance
    of 2.8, 4e-5 at 5.6, 5e-3 at 11, 0.26 at 17, 0.57 at 22, 0.62 at 33 and 44.
    """
    if weights not in WRT_WEIGHTS:
        raise ValueError(f"triplet_wrt: weights must be one of {WRT_WEIGHTS}, got {weights!r}")
    dist, is_pos, is_neg = _triplet_inputs("triplet_wrt", features, labels, normalize)
    if weights == "exact":
        w_pos = torch.softmax(dist.masked_fill(~is_pos, float("-inf")), dim=1)  # zero off the positives
        w_neg = torch.softmax((-dist).masked_fill(~is_neg, float("-inf")), dim=1)  # zero off the negatives
    else:
        w_pos = _agw_softmax_weights(dist * is_pos, is_pos.to(dist.dtype))
        w_neg = _agw_softmax_weights(-dist * is_neg, is_neg.to(dist.dtype))
    furthest_positive = (dist * w_pos).sum(dim=1)
    closest_negative = (dist * w_neg).sum(dim=1)
    return F.softplus(furthest_positive - closest_negative).mean()


def _agw_softmax_weights(values: Tensor, mask: Tensor) -> Tensor:
    """AGW's masked softmax: shifted by the row maximum of ``values * mask``, with 1e-6 in the normaliser."""
    shift = (values * mask).amax(dim=1, keepdim=True)
    scaled = torch.exp(values - shift) * mask
    return scaled / (scaled.sum(dim=1, keepdim=True) + 1e-6)


def triplet_hard(features: Tensor, labels: Tensor, margin: float = 0.3, normalize: bool = False) -> Tensor:
    """Batch-hard triplet loss (Hermans et al.): ``mean(relu(max d_ap - min d_an + margin))``.

    The hardest positive is the furthest same-identity sample (the anchor itself when it is alone), the
    hardest negative the closest other-identity sample; ``nn.MarginRankingLoss(margin)`` with target 1
    computes the same. Euclidean distances on raw features (AGW/CLIP-ReID default), or on L2-normalised
    features with ``normalize=True``.
    """
    if margin < 0:
        raise ValueError(f"triplet_hard: margin must be >= 0, got {margin}")
    dist, is_pos, is_neg = _triplet_inputs("triplet_hard", features, labels, normalize)
    hardest_positive = dist.masked_fill(~is_pos, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(~is_neg, float("inf")).amin(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin).mean()


# --------------------------------------------------------------------------------------------------------
# Modality-shared enhancement (MSEL), stage 3 of the latest release
# --------------------------------------------------------------------------------------------------------


def msel_loss(
    visible: Tensor, visible_labels: Tensor, infrared: Tensor, infrared_labels: Tensor, normalize: bool = False
) -> Tensor:
    """The latest release's MSEL term on one feature (GeM or projected) of a cross-modality batch.

    For every image: ``cross`` = its mean Euclidean distance to the same-identity images of the *other*
    modality, ``intra`` = its mean distance to the *other* same-identity images of its own modality; the
    loss is ``(mean over visible of (cross - intra)^2 + mean over infrared of (cross - intra)^2) / 2``.
    The release computes it on the first visible view and the infrared images of a P x K batch (equal K
    per modality; its top-k trick drops the zero self-distance); here the masks are explicit, so any
    batch in which every identity has at least two images per modality works. Raw features by default
    (the release's ``feat_norm='no'``); ``normalize=True`` L2-normalises first.
    """
    _check_features_labels("msel_loss (visible)", visible, visible_labels)
    _check_features_labels("msel_loss (infrared)", infrared, infrared_labels)
    if normalize:
        visible, infrared = F.normalize(visible, dim=1), F.normalize(infrared, dim=1)
    same_v = visible_labels[:, None] == visible_labels[None, :]
    same_i = infrared_labels[:, None] == infrared_labels[None, :]
    cross_vi = visible_labels[:, None] == infrared_labels[None, :]
    eye_v = torch.eye(len(visible_labels), dtype=torch.bool, device=visible.device)
    eye_i = torch.eye(len(infrared_labels), dtype=torch.bool, device=infrared.device)
    intra_v, intra_i = same_v & ~eye_v, same_i & ~eye_i
    if not (
        bool(intra_v.any(1).all())
        and bool(intra_i.any(1).all())
        and bool(cross_vi.any(1).all())
        and bool(cross_vi.any(0).all())
    ):
        raise ValueError("msel_loss: every identity needs at least two images in each modality of the batch")

    def masked_mean(dist: Tensor, mask: Tensor) -> Tensor:
        return (dist * mask).sum(1) / mask.sum(1)

    d_vi = pairwise_euclidean(visible, infrared)
    gap_v = masked_mean(d_vi, cross_vi) - masked_mean(pairwise_euclidean(visible, visible), intra_v)
    gap_i = masked_mean(d_vi.T, cross_vi.T) - masked_mean(pairwise_euclidean(infrared, infrared), intra_i)
    return (gap_v.pow(2).mean() + gap_i.pow(2).mean()) / 2
