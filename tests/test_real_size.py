"""Real-size CLIP backbones (RN50, ViT-B-16) with random weights: every tapped feature shape and one
optimisation step of each training stage, on CPU with tiny batches.

No download: ``ClipSource(pretrained=None)`` builds the architecture with random weights, which is
enough to check geometry (rectangular inputs, ResNet last stride 1, positional-grid interpolation) and
that gradients reach exactly the parameters each stage trains. Slow (a minute or two, ~2 GB of memory):
deselect with ``-m 'not slow'``.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from csdn.clip.loader import ClipBundle, ClipSource, load_clip
from csdn.data.records import INFRARED, VISIBLE
from csdn.data.transforms import TransformConfig, train_transform
from csdn.model.network import CSDNNet
from csdn.model.prompts import ModalityPrompts
from csdn.model.sii import make_sii
from csdn.train.loop import LoopConfig
from csdn.train.reid_stage import ReIDStageConfig, make_optimizer, reid_losses
from csdn.train.text_stages import CachedFeatures, TextStageConfig, train_prompts, train_sii

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    """One backbone at one input size and the shapes CSDN must see from it."""

    arch: str  # open_clip architecture
    image_size: tuple[int, int]  # (H, W) input
    stem: tuple[int, int, int]  # (C, h, w) of the stem output (RN: after the stem avgpool; ViT: patch grid)
    grid: tuple[int, int]  # (h, w) of the trunk's feature map
    trunk_dim: int  # channels of the feature map = GeM / class-token feature
    embed_dim: int  # projected CLIP feature (joint image-text space)


CASES = {
    # RN50: conv1 stride 2 and the stem avgpool give 1/4 (64 channels); layer4 at stride 1 gives 1/16.
    "rn50-288x144": Case("RN50", (288, 144), (64, 72, 36), (18, 9), 2048, 1024),
    # ViT-B/16: 16-pixel patches, width 768, positional grid interpolated from 14x14.
    "vitb16-256x128": Case("ViT-B-16", (256, 128), (768, 16, 8), (16, 8), 768, 512),
    "vitb16-288x144": Case("ViT-B-16", (288, 144), (768, 18, 9), (18, 9), 768, 512),
}
ONE_PER_ARCH = ["rn50-288x144", "vitb16-256x128"]  # the text side does not depend on the image size
TEXT_WIDTH = 512  # width of the text transformer of both RN50 and ViT-B-16


@pytest.fixture(scope="module", params=list(CASES))
def case_and_bundle(request) -> tuple[Case, ClipBundle]:
    case = CASES[request.param]
    torch.manual_seed(0)
    return case, load_clip(ClipSource(arch=case.arch, pretrained=None, image_size=case.image_size))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> dict[str, bool]:
    return {name: not torch.equal(p.detach(), before[name]) for name, p in module.named_parameters()}


# ----------------------------------------------------------------------------------------------------
# Shapes


def test_clip_tower_pieces_have_the_tapped_shapes(case_and_bundle) -> None:
    case, bundle = case_and_bundle
    visual = bundle.visual()
    assert visual.image_size == case.image_size and visual.grid == case.grid
    assert (visual.trunk_dim, visual.embed_dim) == (case.trunk_dim, case.embed_dim)
    x = torch.randn(2, 3, *case.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stem_out = visual.forward_stem(x)
        feats = visual.trunk(stem_out)
        clip_image_feature = bundle.model.encode_image(x)
    assert stem_out.shape == (2, *case.stem)
    assert feats.feature_map.shape == (2, case.trunk_dim, *case.grid)
    assert feats.pooled.shape == (2, case.trunk_dim)
    assert feats.projected.shape == (2, case.embed_dim)
    # stem + trunk is the adapted CLIP tower itself
    torch.testing.assert_close(feats.projected, clip_image_feature, rtol=1e-4, atol=1e-5)


def test_csdn_net_heads_and_inference_feature_shapes(case_and_bundle) -> None:
    case, bundle = case_and_bundle
    net = CSDNNet(bundle.visual(), num_ids=3).eval()
    g = torch.Generator().manual_seed(2)
    x_vis, x_ir = torch.randn(2, 3, *case.image_size, generator=g), torch.randn(1, 3, *case.image_size, generator=g)
    with torch.no_grad():
        assert net.stem_for(VISIBLE)(x_vis).shape == (2, *case.stem)
        assert net.stem_for(INFRARED)(x_ir).shape == (1, *case.stem)
        out = net([(x_vis, VISIBLE), (x_ir, INFRARED)])
        embedded = net.embed(x_ir, INFRARED)
    assert out.gem.shape == (3, case.trunk_dim) and out.proj.shape == (3, case.embed_dim)
    assert out.gem_logits.shape == (3, 3) and out.proj_logits.shape == (3, 3)
    assert embedded.shape == (1, case.trunk_dim + case.embed_dim)
    assert all(torch.isfinite(t).all() for t in (*out, embedded))


# ----------------------------------------------------------------------------------------------------
# Stages 1 and 2: the text side


def _image_features(dim: int) -> CachedFeatures:
    """2 identities x 2 frozen-CLIP image features per modality (one stage-1/2 batch of 2 ids x 2)."""
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 1])
    return CachedFeatures(torch.randn(4, dim, generator=g), labels, torch.randn(4, dim, generator=g), labels.clone())


ONE_STEP = TextStageConfig(epochs=1, warmup_epochs=0, ids_per_batch=2, instances=2)  # one batch, full lr
ONE_EPOCH = LoopConfig(epochs=1, progress=False)


def _prompts(bundle: ClipBundle, text_encoder) -> ModalityPrompts:
    return ModalityPrompts.build(
        2,
        shared=False,
        wording="paper",
        token_embedding=text_encoder.token_embedding,
        tokenizer=bundle.tokenizer,
        context_length=bundle.context_length,
        generator=torch.Generator().manual_seed(4),
    )


@pytest.mark.parametrize("case_and_bundle", ONE_PER_ARCH, indirect=True)
def test_stage1_step_trains_the_prompts_and_not_the_text_encoder(case_and_bundle, tmp_path: Path) -> None:
    case, bundle = case_and_bundle
    encoder = bundle.text_encoder()
    assert encoder.width == TEXT_WIDTH and encoder.embed_dim == case.embed_dim
    prompts = _prompts(bundle, encoder)
    assert prompts.learner(VISIBLE).context.shape == (2, 4, TEXT_WIDTH)
    prompts_before, encoder_before = _snapshot(prompts), _snapshot(encoder)
    history = train_prompts(prompts, encoder, _image_features(case.embed_dim), ONE_STEP, tmp_path, ONE_EPOCH)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    assert all(_changed(prompts, prompts_before).values())  # both learners' contexts moved
    assert not any(_changed(encoder, encoder_before).values())
    assert all(p.grad is None for p in encoder.parameters())


@pytest.mark.parametrize("kind", ["official", "attention"])
@pytest.mark.parametrize("case_and_bundle", ONE_PER_ARCH, indirect=True)
def test_stage2_step_trains_every_sii_parameter(case_and_bundle, kind: str, tmp_path: Path) -> None:
    case, bundle = case_and_bundle
    encoder = bundle.text_encoder()
    prompts = _prompts(bundle, encoder)
    t_vis, t_ir = prompts.all_text_features(encoder, VISIBLE), prompts.all_text_features(encoder, INFRARED)
    assert t_vis.shape == t_ir.shape == (2, case.embed_dim)
    torch.manual_seed(5)  # SII initialisation and dropout
    sii = make_sii(kind, case.embed_dim)
    before = _snapshot(sii)
    history = train_sii(sii, t_vis, t_ir, _image_features(case.embed_dim), ONE_STEP, tmp_path, ONE_EPOCH)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    changed = _changed(sii, before)
    assert changed and all(changed.values()), changed
    with torch.no_grad():
        assert sii.eval()(t_vis, t_ir).shape == (2, case.embed_dim)


# ----------------------------------------------------------------------------------------------------
# Stage 3: HSE + re-ID on the image side


def _stage3_batch(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 ids x 2 images per modality (MSEL needs two), each visible image in two views (plain, exchanged)."""
    torch.manual_seed(6)  # the transforms draw from the global generator
    tcfg = TransformConfig(height=case.image_size[0], width=case.image_size[1])
    raw = torch.randint(0, 256, (8, 3, *case.image_size), dtype=torch.uint8)
    plain, exchange, gray = (train_transform(tcfg, k) for k in ("visible", "visible_exchange", "infrared"))
    x_vis = torch.stack([plain(raw[i]) for i in range(4)] + [exchange(raw[i]) for i in range(4)])
    x_ir = torch.stack([gray(raw[i]) for i in range(4, 8)])
    ids = torch.tensor([0, 0, 1, 1])
    labels = torch.cat([ids, ids, ids])  # visible rows (two views), then infrared rows
    return x_vis, x_ir, labels


def test_stage3_step_trains_stems_trunk_and_heads(case_and_bundle) -> None:
    case, bundle = case_and_bundle
    x_vis, x_ir, labels = _stage3_batch(case)
    assert x_vis.shape == (8, 3, *case.image_size) and x_ir.shape == (4, 3, *case.image_size)
    net = CSDNNet(bundle.visual(), num_ids=2).train()
    prototypes = torch.randn(2, case.embed_dim, generator=torch.Generator().manual_seed(7))
    cfg = ReIDStageConfig()  # the released objective, MSEL included
    optimizer = make_optimizer(net, cfg)
    before = _snapshot(net)

    out = net([(x_vis, VISIBLE), (x_ir, INFRARED)])
    terms = reid_losses(out, labels, len(x_vis), {VISIBLE: prototypes, INFRARED: prototypes}, cfg)
    assert set(terms) == {"id", "triplet", "hse", "msel"}
    assert all(torch.isfinite(t) for t in terms.values()), terms
    optimizer.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    optimizer.step()

    trainable = {name: p for name, p in net.named_parameters() if p.requires_grad}
    # ViT heads pool the class token, so GeM's exponent is the one trainable parameter left unused
    unused = set() if net.pool_with_gem else {"gem.p"}
    assert {name for name, p in trainable.items() if p.grad is None} == unused
    changed = _changed(net, before)
    # Every parameter with a gradient moved. (Random open_clip ResNets zero-initialise each bottleneck's
    # bn3 weight, so bn1/bn2 biases, at zero, get a zero gradient on the first step and stay put.)
    assert all(changed[name] for name, p in trainable.items() if p.grad is not None and p.grad.any())
    assert not changed["bn_gem.bias"] and not changed["bn_proj.bias"]  # frozen BNNeck biases
    for part in (f"stems.{VISIBLE}.", f"stems.{INFRARED}.", "trunk.", "bn_gem.", "cls_gem.", "bn_proj.", "cls_proj."):
        assert any(moved for name, moved in changed.items() if name.startswith(part)), part
    for modality in (VISIBLE, INFRARED):  # each stem received its own modality's gradient
        assert all(p.grad is not None and p.grad.any() for p in net.stem_for(modality).parameters())
