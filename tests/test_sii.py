"""SII variants: shapes, exact values, equivariance, gradient flow and the stage-3 prototypes."""

import math

import pytest
import torch
from torch import nn

from csdn.losses import i2t_t2i_loss
from csdn.model.sii import SII_KINDS, AttentionSII, OfficialSII, make_sii, text_prototypes

DIM = 8


def pair(batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, DIM, generator=g), torch.randn(batch, DIM, generator=g)


@pytest.mark.parametrize("kind", ["official", "attention", "mean"])
def test_fusing_variants_keep_shape(kind):
    sii = make_sii(kind, DIM, heads=2)
    t_vis, t_ir = pair()
    assert sii.fuses
    assert sii(t_vis, t_ir).shape == (5, DIM)


def test_mean_is_the_exact_average():
    t_vis, t_ir = torch.tensor([[1.0, -2.0, 4.0]]), torch.tensor([[3.0, 2.0, -1.0]])
    fused = make_sii("mean", 3)(t_vis, t_ir)
    assert fused.tolist() == [[2.0, 0.0, 1.5]]
    assert list(make_sii("mean", 3).parameters()) == []


def test_official_with_zero_common_projection_returns_t_vis_exactly():
    sii = make_sii("official", DIM)
    nn.init.zeros_(sii.common.weight)
    nn.init.zeros_(sii.common.bias)
    sii.train()  # dropout active: still exact
    t_vis, t_ir = pair()
    assert torch.equal(sii(t_vis, t_ir), t_vis)


def test_official_matches_hand_computation():
    sii = OfficialSII(2).eval()
    with torch.no_grad():
        sii.value.weight.copy_(torch.eye(2))
        sii.value.bias.zero_()
        sii.common.weight.copy_(2 * torch.eye(2))
        sii.common.bias.copy_(torch.tensor([1.0, 0.0]))
    fused = sii(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, -1.0]]))
    expected = [1 + 2 * math.tanh(0.5) + 1, 1 + 2 * math.tanh(-1.0)]
    assert fused[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_attention_is_permutation_equivariant_over_the_batch():
    torch.manual_seed(0)
    sii = make_sii("attention", DIM, heads=2).eval()
    t_vis, t_ir = pair(batch=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(sii(t_vis[perm], t_ir[perm]), sii(t_vis, t_ir)[perm])


def test_attention_mixes_identities_never_and_modalities_symmetrically():
    torch.manual_seed(0)
    sii = make_sii("attention", DIM, heads=2).eval()
    t_vis, t_ir = pair(batch=4)
    full = sii(t_vis, t_ir)
    torch.testing.assert_close(sii(t_vis[:1], t_ir[:1]), full[:1])  # no interaction across identities
    torch.testing.assert_close(sii(t_ir, t_vis), full)  # no modality embedding: symmetric in its inputs
    weights = sii.attention_weights(t_vis, t_ir)
    assert weights.shape == (4, 2, 2, 2)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(4, 2, 2))


@pytest.mark.parametrize("kind", ["official", "attention"])
def test_stage2_gradients_reach_every_sii_parameter_and_nothing_else(kind):
    torch.manual_seed(0)
    text_side = nn.Linear(DIM, DIM).requires_grad_(False)  # stands in for the frozen prompts + text encoder
    sii = make_sii(kind, DIM, heads=2)
    labels = torch.tensor([0, 1, 2])
    t_vis, t_ir = text_side(torch.randn(3, DIM)), text_side(torch.randn(3, DIM))
    images = torch.randn(6, DIM)  # cached image features of both modalities
    loss = i2t_t2i_loss(images, labels.repeat(2), sii(t_vis, t_ir), labels)
    loss.backward()
    for name, p in sii.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in text_side.parameters())


def test_none_does_not_fuse_and_keeps_per_modality_prototypes():
    sii = make_sii("none", DIM)
    t_vis, t_ir = pair()
    assert not sii.fuses and list(sii.parameters()) == []
    with pytest.raises(RuntimeError, match="does not fuse"):
        sii(t_vis, t_ir)
    protos = text_prototypes(sii, t_vis, t_ir)
    assert torch.equal(protos["visible"], t_vis) and torch.equal(protos["infrared"], t_ir)


def test_text_prototypes_of_a_fusing_sii_are_deterministic_and_restore_mode():
    sii = make_sii("official", DIM, dropout=0.5).train()
    t_vis, t_ir = pair()
    first = text_prototypes(sii, t_vis, t_ir)
    second = text_prototypes(sii, t_vis, t_ir)
    assert sii.training
    assert torch.equal(first["visible"], first["infrared"])
    assert torch.equal(first["visible"], second["visible"])  # eval mode: no dropout
    assert not first["visible"].requires_grad
    torch.testing.assert_close(first["visible"], sii.eval()(t_vis, t_ir))


def test_factory_and_inputs_reject_bad_arguments():
    assert SII_KINDS == ("official", "attention", "mean", "none")
    with pytest.raises(ValueError, match="unknown SII kind 'concat'"):
        make_sii("concat", DIM)
    with pytest.raises(ValueError, match="not divisible by heads 3"):
        AttentionSII(DIM, heads=3)
    t_vis, t_ir = pair()
    with pytest.raises(ValueError, match="built for dim 4"):
        make_sii("official", 4)(t_vis, t_ir)
    with pytest.raises(ValueError, match="same shape"):
        make_sii("mean", DIM)(t_vis, t_ir[:2])
