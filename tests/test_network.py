"""The CSDN image network on tiny random CLIPs: stems per modality, heads, inference feature."""

import pytest
import torch

from csdn.clip.loader import ClipSource, load_clip
from csdn.data.records import INFRARED, VISIBLE
from csdn.model.network import CSDNNet, GeM, ModelConfig, _PowerMean


@pytest.fixture(scope="module", params=["csdn-tiny-rn", "csdn-tiny-vit"])
def visual(request):
    torch.manual_seed(0)
    return load_clip(ClipSource(arch=request.param, image_size=(64, 32))).visual()


def test_shapes_and_separate_stems(visual) -> None:
    net = CSDNNet(visual, num_ids=5)
    x_vis, x_ir = torch.randn(4, 3, 64, 32), torch.randn(3, 3, 64, 32)
    out = net([(x_vis, VISIBLE), (x_ir, INFRARED)])
    assert out.gem.shape == (7, visual.trunk_dim) and out.proj.shape == (7, visual.embed_dim)
    assert out.gem_logits.shape == (7, 5) and out.proj_logits.shape == (7, 5)
    assert net.stem_for(VISIBLE) is not net.stem_for(INFRARED)
    # the stems start equal (copies of CLIP's) but are separate parameters
    for a, b in zip(net.stem_for(VISIBLE).parameters(), net.stem_for(INFRARED).parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_shared_stem_for_baselines(visual) -> None:
    net = CSDNNet(visual, num_ids=5, modality_stems=False)
    assert net.stem_for(VISIBLE) is net.stem_for(INFRARED)


def test_modality_routes_through_its_own_stem(visual) -> None:
    net = CSDNNet(visual, num_ids=3).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        before = net.embed(x, INFRARED)
        for p in net.stem_for(VISIBLE).parameters():
            p.add_(0.5)
        assert torch.equal(net.embed(x, INFRARED), before)
        assert not torch.allclose(net.embed(x, VISIBLE), before)


def test_embed_is_two_unit_halves(visual) -> None:
    net = CSDNNet(visual, num_ids=3).eval()
    with torch.no_grad():
        f = net.embed(torch.randn(3, 3, 64, 32), VISIBLE)
    assert f.shape == (3, visual.trunk_dim + visual.embed_dim)
    torch.testing.assert_close(f[:, : visual.trunk_dim].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(f[:, visual.trunk_dim :].norm(dim=1), torch.ones(3))


def test_the_clip_model_is_not_modified(visual) -> None:
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    net = CSDNNet(visual, num_ids=3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for k, v in visual.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bnneck_bias_frozen_and_bad_modality(visual) -> None:
    net = CSDNNet(visual, num_ids=3)
    assert not net.bn_gem.bias.requires_grad and not net.bn_proj.bias.requires_grad
    with pytest.raises(ValueError, match="modality"):
        net.embed(torch.randn(1, 3, 64, 32), "thermal")


def test_gem_by_hand() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    torch.testing.assert_close(GeM(3.0)(x), torch.tensor([[expected]]))


def test_gem_gradients_are_autograds() -> None:
    """GeM's backward (reusing the forward's power) equals the gradient of the plain autograd formula, for
    the map and the exponent; cells below eps get no gradient (the clamp)."""
    x = torch.rand(3, 4, 2, 3, dtype=torch.float64) + 0.1
    x[0, 0, 0, 0] = 0.0  # clamped to eps
    for p in (3.0, 1.7):
        gem = GeM(p).double()
        p_plain = torch.nn.Parameter(torch.tensor(p, dtype=torch.float64))
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        weights = torch.randn(3, 4, dtype=torch.float64)
        (gem(xa) * weights).sum().backward()
        (xb.clamp(min=1e-6).pow(p_plain).mean(dim=(2, 3)).pow(1 / p_plain) * weights).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(gem.p.grad, p_plain.grad)
        assert xa.grad[0, 0, 0, 0] == 0
    gem = GeM(2.5).double()
    assert torch.autograd.gradcheck(lambda t, q: _PowerMean.apply(t, q, 1e-6), (x[1:].clone().requires_grad_(), gem.p))


def test_model_config_variants() -> None:
    assert ModelConfig().sii_kind == "official" and ModelConfig().uses_text
    assert ModelConfig(variant="clip-reid").shared_prompts and ModelConfig(variant="clip-reid").sii_kind == "none"
    assert not ModelConfig(variant="vision-only").uses_text
    with pytest.raises(ValueError, match="variant"):
        ModelConfig(variant="csdn++")


def test_backbone_trains_even_when_the_source_clip_is_frozen(visual) -> None:
    visual.requires_grad_(False)
    try:
        net = CSDNNet(visual, num_ids=3)
        assert all(p.requires_grad for p in net.trunk.parameters())
        assert all(p.requires_grad for p in net.stem_for(VISIBLE).parameters())
        assert all(p.requires_grad for p in net.stem_for(INFRARED).parameters())
    finally:
        visual.requires_grad_(True)


def _count_stem_batchnorm_calls(net: CSDNNet, parts) -> list[int]:
    """Batch sizes seen by the first BatchNorm of the stem(s), one entry per forward call."""
    seen: list[int] = []
    stems = {id(net.stem_for(m)): net.stem_for(m) for m in (VISIBLE, INFRARED)}
    hooks = [
        next(m for m in stem.modules() if isinstance(m, torch.nn.BatchNorm2d)).register_forward_hook(
            lambda mod, inp, out: seen.append(inp[0].shape[0])
        )
        for stem in stems.values()
    ]
    net.train()
    net(parts)
    for h in hooks:
        h.remove()
    return seen


def test_shared_stem_runs_once_over_both_modalities() -> None:
    """A shared stem's BatchNorm normalises visible and infrared with one set of statistics (one call)."""
    torch.manual_seed(0)
    visual = load_clip(ClipSource(arch="csdn-tiny-rn", image_size=(64, 32))).visual()
    net = CSDNNet(visual, num_ids=5, modality_stems=False)
    parts = [(torch.randn(4, 3, 64, 32), VISIBLE), (torch.randn(3, 3, 64, 32) * 3, INFRARED)]
    assert _count_stem_batchnorm_calls(net, parts) == [7]
    # separate stems: one call each, on its own modality
    assert _count_stem_batchnorm_calls(CSDNNet(visual, num_ids=5), parts) == [4, 3]


def test_shared_stem_training_output_does_not_depend_on_modality_split() -> None:
    """With one stem, cutting the same images into visible/infrared parts differently changes nothing."""
    torch.manual_seed(0)
    visual = load_clip(ClipSource(arch="csdn-tiny-rn", image_size=(64, 32))).visual()
    net = CSDNNet(visual, num_ids=5, modality_stems=False).train()
    x = torch.randn(6, 3, 64, 32)
    a = net([(x[:2], VISIBLE), (x[2:], INFRARED)]).proj
    b = net([(x[:5], VISIBLE), (x[5:], INFRARED)]).proj
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "variant, stems, text",
    [
        ("csdn", True, True),
        ("clip-reid", False, True),
        ("vision-only", False, False),
        ("vision-only-stems", True, False),
    ],
)
def test_variant_name_decides_the_network(variant, stems, text) -> None:
    cfg = ModelConfig(variant=variant)
    assert cfg.modality_stems is stems and cfg.uses_text is text
