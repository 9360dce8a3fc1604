"""Losses on hand-made tensors; every expected value is worked out by hand in the comments."""

import math

import pytest
import torch

from csdn.losses import (
    hse_loss,
    i2t_t2i_loss,
    id_loss,
    msel_loss,
    pairwise_euclidean,
    supcon_loss,
    triplet_hard,
    triplet_wrt,
)

E = math.e


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def lab(values):
    return torch.tensor(values, dtype=torch.long)


# Anchors a (two identities) against a side b of three features, two of identity 0.
A, LA = t([[1, 0], [0, 1]]), lab([0, 1])
B, LB = t([[1, 0], [0, 1], [1, 1]]), lab([0, 1, 0])


def test_supcon_matches_hand_computation():
    # row 0: logits [1, 0, 1], positives cols 0 and 2 -> mean log-prob 1 - log(2e + 1)
    # row 1: logits [0, 1, 1], positive col 1       -> log-prob 1 - log(1 + 2e)
    expected = math.log(1 + 2 * E) - 1
    assert supcon_loss(A, B, LA, LB).item() == pytest.approx(expected, abs=1e-12)


def test_supcon_temperature_divides_logits():
    # temperature 0.5 doubles the logits: both rows give 2 - log(1 + 2e^2)
    expected = math.log(1 + 2 * E**2) - 2
    assert supcon_loss(A, B, LA, LB, temperature=0.5).item() == pytest.approx(expected, abs=1e-12)


def test_i2t_t2i_is_the_sum_of_both_directions():
    i2t = math.log(1 + 2 * E) - 1
    # t2i anchors are B against A: [1,0]->logits [1,0] pos col 0; [0,1]->[0,1] pos col 1; [1,1]->[1,1] pos col 0
    t2i = -((1 - math.log(1 + E)) * 2 + (1 - math.log(2 * E))) / 3
    assert i2t_t2i_loss(A, LA, B, LB).item() == pytest.approx(i2t + t2i, abs=1e-12)


def test_supcon_rejects_anchor_without_positive():
    with pytest.raises(ValueError, match=r"rows \[1\] have no column"):
        supcon_loss(A, B[[0, 2]], LA, LB[[0, 2]])


def test_supcon_rejects_shape_mismatches():
    with pytest.raises(ValueError, match="anchor dim 2 != column dim 3"):
        supcon_loss(A, torch.zeros(3, 3, dtype=torch.float64), LA, LB)
    with pytest.raises(ValueError, match="labels must be"):
        supcon_loss(A, B, lab([0, 1, 1]), LB)
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(A, B, LA, LB, temperature=0.0)


def test_id_loss_plain_and_smoothed():
    logits, label = t([[0.0, math.log(3.0)]]), lab([1])
    # softmax = [1/4, 3/4]
    assert id_loss(logits, label).item() == pytest.approx(math.log(4 / 3), abs=1e-12)
    # eps = 0.2 over 2 classes: targets [0.1, 0.9]
    smoothed = 0.1 * math.log(4) + 0.9 * math.log(4 / 3)
    assert id_loss(logits, label, label_smoothing=0.2).item() == pytest.approx(smoothed, abs=1e-12)
    with pytest.raises(ValueError, match="label_smoothing"):
        id_loss(logits, label, label_smoothing=1.0)


def test_hse_uses_raw_dot_products():
    image = t([[1, 0], [0, 2]])
    prototypes = t([[2, 0], [0, 1], [0, 0]])
    # row 0: logits [2, 0, 0], label 0 -> log(1 + 2e^-2); row 1: logits [0, 2, 0], label 1 -> same
    expected = math.log(1 + 2 * E**-2)
    assert hse_loss(image, prototypes, lab([0, 1])).item() == pytest.approx(expected, abs=1e-12)


def test_hse_rejects_bad_labels_and_shapes():
    image, prototypes = t([[1, 0]]), t([[2, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        hse_loss(image, prototypes, lab([2]))
    with pytest.raises(ValueError, match="text_prototypes must be"):
        hse_loss(image, t([[1, 0, 0]]), lab([0]))


# Four 1-d points 0, 1, 3, 6; identities {0, 1} and {3, 6}.
X, LX = t([[0], [1], [3], [6]]), lab([0, 0, 1, 1])


def test_pairwise_euclidean():
    d = pairwise_euclidean(X, X)
    assert d[0, 3].item() == pytest.approx(6.0)
    assert d[2, 1].item() == pytest.approx(2.0)
    assert d[1, 1].item() == pytest.approx(1e-6)  # clamped at 1e-12 before sqrt


def test_triplet_hard_matches_hand_computation():
    # anchors: (d_ap, d_an) = (1, 3), (1, 2), (3, 2), (3, 5) -> relu(d_ap - d_an + 0.3) = 0, 0, 1.3, 0
    assert triplet_hard(X, LX).item() == pytest.approx(1.3 / 4, abs=1e-9)
    # margin 2: 0, 1, 3, 0
    assert triplet_hard(X, LX, margin=2.0).item() == pytest.approx(4 / 4, abs=1e-9)


def test_triplet_hard_normalize_uses_unit_vectors():
    feats, labels = t([[2, 0], [3, 0], [0, 1], [0, 5]]), lab([0, 0, 1, 1])
    # normalised: same-identity points coincide (d_ap = 1e-6), the others are sqrt(2) apart
    expected = 1e-6 - math.sqrt(2) + 2.0
    assert triplet_hard(feats, labels, margin=2.0, normalize=True).item() == pytest.approx(expected, abs=1e-9)


def _softplus(x):
    return math.log1p(math.exp(x))


def test_triplet_wrt_matches_hand_computation():
    def weighted(distances, sign):
        w = [math.exp(sign * d) for d in distances]
        return sum(wi * d for wi, d in zip(w, distances)) / sum(w)

    eps = 1e-6  # the anchor's distance to itself after the clamp
    rows = [  # (positive distances incl. self, negative distances)
        ([eps, 1.0], [3.0, 6.0]),
        ([1.0, eps], [2.0, 5.0]),
        ([eps, 3.0], [3.0, 2.0]),
        ([3.0, eps], [6.0, 5.0]),
    ]
    expected = sum(_softplus(weighted(p, +1) - weighted(n, -1)) for p, n in rows) / 4
    assert triplet_wrt(X, LX).item() == pytest.approx(expected, abs=1e-9)


def test_triplet_wrt_is_finite_and_differentiable_at_coinciding_points():
    feats = t([[1, 1], [1, 1], [0, 2], [3, 0]]).requires_grad_(True)
    loss = triplet_wrt(feats, lab([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
    assert feats.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [triplet_wrt, triplet_hard])
def test_triplet_rejects_single_identity_and_bad_shapes(loss):
    with pytest.raises(ValueError, match="single identity"):
        loss(X, lab([4, 4, 4, 4]))
    with pytest.raises(ValueError, match="labels must be"):
        loss(X, lab([0, 1]))
    with pytest.raises(ValueError, match=r"features must be \(N, d\)"):
        loss(X.flatten(), LX)


# ---- MSEL (latest release) ---------------------------------------------------------------------------


def test_msel_hand_computed_one_identity():
    # 1-D features, so distances are |a - b|. Visible 0, 2; infrared 5, 9 (one identity).
    # visible: 0 -> cross (5 + 9)/2 = 7, intra 2, gap 5; 2 -> cross (3 + 7)/2 = 5, intra 2, gap 3 => mean 17
    # infrared: 5 -> cross (5 + 3)/2 = 4, intra 4, gap 0; 9 -> cross (9 + 7)/2 = 8, intra 4, gap 4 => mean 8
    v, i = torch.tensor([[0.0], [2.0]], dtype=torch.float64), torch.tensor([[5.0], [9.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    assert msel_loss(v, y, i, y).item() == pytest.approx((17 + 8) / 2, abs=1e-9)


def test_msel_identities_do_not_mix():
    # a second identity far away, with all of its images at one point, adds gaps of 0
    v = torch.tensor([[0.0], [2.0], [100.0], [100.0]], dtype=torch.float64)
    i = torch.tensor([[5.0], [9.0], [100.0], [100.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    assert msel_loss(v, y, i, y).item() == pytest.approx(((25 + 9) / 4 + 16 / 4) / 2, abs=1e-5)


def _msel_topk_reference(feats: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The release's formulation, restated: rows [visible P*K; infrared P*K] in the same label order, the
    own-modality mean over the k-1 largest same-identity distances (the self distance is the smallest)."""
    n = len(labels)
    d = torch.cdist(feats, feats)
    pos = labels[:, None] == labels[None, :]
    out = []
    for own, other in ((slice(0, n), slice(n, 2 * n)), (slice(n, 2 * n), slice(0, n))):
        intra = (d[own, own] * pos).topk(k - 1, dim=1).values.mean(1)
        cross = d[own, other][pos].view(n, -1).mean(1)
        out.append((cross - intra).pow(2).mean())
    return sum(out) / 2


def test_msel_matches_the_release_formulation_on_a_pk_batch():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)  # P = 4 identities x K = 3
    v, i = torch.randn(12, 8, generator=g, dtype=torch.float64), torch.randn(12, 8, generator=g, dtype=torch.float64)
    expected = _msel_topk_reference(torch.cat([v, i]), labels, k=3)
    assert msel_loss(v, labels, i, labels).item() == pytest.approx(expected.item(), rel=1e-9)


def test_msel_normalize_and_gradient():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(2).repeat_interleave(2)
    v = torch.randn(4, 5, generator=g, requires_grad=True)
    i = torch.randn(4, 5, generator=g)
    scaled = msel_loss(v * 10, labels, i * 10, labels, normalize=True)
    assert scaled.item() == pytest.approx(msel_loss(v, labels, i, labels, normalize=True).item(), rel=1e-5)
    msel_loss(v, labels, i, labels).backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_msel_needs_two_images_per_identity_and_modality():
    with pytest.raises(ValueError, match="two images"):
        msel_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(2, 3), torch.tensor([0, 1]))


def test_hse_cosine_cannot_be_lowered_by_shrinking_features():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    wrong = torch.tensor([[0.0, 5.0]])  # an image of identity 0 placed on identity 1's prototype
    y = torch.tensor([0])
    # raw logits: shrinking the wrong feature lowers the loss towards ln 2 (the collapse)
    assert hse_loss(wrong * 0.01, protos, y) < hse_loss(wrong, protos, y)
    # cosine logits: the scale of the feature does not matter
    assert hse_loss(wrong * 0.01, protos, y, 0.1, cosine=True).item() == pytest.approx(
        hse_loss(wrong, protos, y, 0.1, cosine=True).item()
    )
    expected = math.log(1 + math.exp(10.0))  # logits (0, 10): -log softmax_0
    assert hse_loss(wrong, protos, y, 0.1, cosine=True).item() == pytest.approx(expected, rel=1e-6)
