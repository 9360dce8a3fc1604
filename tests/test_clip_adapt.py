"""csdn.clip.adapt: rectangular RN50 / ViT-B/16 (random weights), stem/trunk split, the text encoder."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d
from torch import nn

from csdn.clip.adapt import (
    ClipVisual,
    MeanQueryAttentionPool,
    TextEncoder,
    adapt_visual,
    resize_grid_embedding,
    resnet_grid,
    resnet_last_stride,
)
from csdn.clip.loader import ClipSource, load_clip


@pytest.fixture(scope="module")
def rn50():
    torch.manual_seed(0)
    return load_clip(ClipSource("RN50", None, (288, 144)))


@pytest.fixture(scope="module")
def vitb16():
    torch.manual_seed(0)
    return load_clip(ClipSource("ViT-B-16", None, (256, 128)))


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return load_clip(ClipSource("csdn-tiny-vit", None, (64, 32)))


def test_rn50_at_288x144_gives_every_feature_csdn_taps(rn50):
    visual = rn50.visual()
    assert resnet_last_stride(rn50.model.visual) == 1
    assert rn50.model.visual.attnpool.positional_embedding.shape == (18 * 9 + 1, 2048)
    assert (visual.kind, visual.trunk_dim, visual.embed_dim, visual.grid) == ("resnet", 2048, 1024, (18, 9))
    x = torch.randn(1, 3, 288, 144)
    with torch.no_grad():
        stem = visual.forward_stem(x)
        fmap, projected = visual.forward_trunk(stem)
        pooled = visual.features(x).pooled
        reference = rn50.model.encode_image(x)
    assert stem.shape == (1, 64, 72, 36)
    assert fmap.shape == (1, 2048, 18, 9)
    assert pooled.shape == (1, 2048)
    assert projected.shape == (1, 1024)
    torch.testing.assert_close(projected, reference)
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))


def test_vitb16_at_256x128_interpolates_the_positional_grid(vitb16):
    visual = vitb16.visual()
    assert vitb16.model.visual.positional_embedding.shape == (16 * 8 + 1, 768)
    assert (visual.kind, visual.trunk_dim, visual.embed_dim, visual.grid) == ("vit", 768, 512, (16, 8))
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        stem = visual.forward_stem(x)
        features = visual.trunk(stem)
        reference = vitb16.model.encode_image(x)
    assert stem.shape == (1, 768, 16, 8)
    assert features.feature_map.shape == (1, 768, 16, 8)
    assert features.pooled.shape == (1, 768)
    assert features.projected.shape == (1, 512)
    torch.testing.assert_close(features.projected, reference)


def test_square_checkpoint_grid_is_interpolated_keeping_the_class_token():
    torch.manual_seed(0)
    token = torch.randn(1, 4)
    constant = torch.ones(14 * 14, 4) * torch.tensor([1.0, -2.0, 3.0, 0.5])
    resized = resize_grid_embedding(torch.cat([token, constant]), (14, 14), (16, 8))
    assert resized.shape == (16 * 8 + 1, 4)
    torch.testing.assert_close(resized[0], token[0])
    torch.testing.assert_close(resized[1:], torch.ones(128, 4) * torch.tensor([1.0, -2.0, 3.0, 0.5]))
    same = torch.randn(9, 4)
    assert resize_grid_embedding(same, (4, 2), (4, 2)) is same
    with pytest.raises(ValueError, match="does not fit"):
        resize_grid_embedding(torch.randn(10, 4), (4, 2), (8, 4))


@pytest.fixture(scope="module")
def tiny_rn_visual():
    torch.manual_seed(0)
    return load_clip(ClipSource("csdn-tiny-rn", None, (128, 64))).model.visual


def test_resnet_grid_matches_the_actual_feature_map(tiny_rn_visual):
    for size, stride in [((128, 64), 1), ((64, 32), 1), ((96, 48), 2), ((100, 50), 1)]:
        visual = copy.deepcopy(tiny_rn_visual)
        adapt_visual(visual, size, last_stride=stride)
        with torch.no_grad():
            fmap = ClipVisual(visual).features(torch.randn(1, 3, *size)).feature_map
        assert tuple(fmap.shape[2:]) == resnet_grid(size, stride)


def test_readapting_changes_stride_and_size_back_and_forth(tiny_rn_visual):
    visual = copy.deepcopy(tiny_rn_visual)
    adapt_visual(visual, (64, 64), last_stride=2)
    assert resnet_last_stride(visual) == 2 and visual.attnpool.positional_embedding.shape[0] == 2 * 2 + 1
    with torch.no_grad():
        assert visual(torch.randn(1, 3, 64, 64)).shape == (1, 128)


def test_vit_size_must_be_a_multiple_of_the_patch(tiny_vit):
    visual = copy.deepcopy(tiny_vit.model.visual)
    with pytest.raises(ValueError, match="multiple of the ViT patch"):
        adapt_visual(visual, (100, 50))


def test_stem_copies_are_independent_and_parameters_are_partitioned(tiny_vit):
    visual = tiny_vit.visual()
    n_tower = sum(p.numel() for p in tiny_vit.model.visual.parameters())
    assert sum(p.numel() for p in visual.parameters()) == n_tower
    n_stem = sum(p.numel() for p in visual.stem.parameters())
    assert n_stem + sum(p.numel() for p in visual.trunk.parameters()) == n_tower
    private = copy.deepcopy(visual.stem)
    with torch.no_grad():
        next(private.parameters()).add_(1.0)
    assert not torch.equal(next(private.parameters()), next(visual.stem.parameters()))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        fmap, projected = visual.forward_trunk(private(x))
    assert fmap.shape == (2, 128, 4, 2) and projected.shape == (2, 128)


def test_text_encoder_matches_encode_text_and_is_frozen(tiny_vit):
    encoder = tiny_vit.text_encoder()
    texts = ["a photo of a person wearing a red top.", "an infrared photo of a person."]
    with torch.no_grad():
        ours = encoder.encode(texts)
        reference = tiny_vit.model.encode_text(tiny_vit.tokenizer(texts))
    torch.testing.assert_close(ours, reference)
    assert all(not p.requires_grad for p in encoder.parameters())
    assert (encoder.width, encoder.embed_dim, encoder.context_length) == (128, 128, 48)


def test_text_encoder_runs_on_learnable_prompt_embeddings(tiny_vit):
    encoder = TextEncoder(tiny_vit.model, tiny_vit.tokenizer)
    tokens = encoder.tokenize(["a photo of a x x x x person."])
    eot = tokens.argmax(dim=-1)
    prompts = encoder.token_embedding(tokens).detach().clone().requires_grad_(True)
    full = encoder(prompts, eot)
    trimmed = encoder(prompts[:, : int(eot) + 1], eot)
    torch.testing.assert_close(full, trimmed)  # positions after EOT cannot matter under the causal mask
    full.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exceeds the context length"):
        encoder(torch.zeros(1, 49, 128), eot)
    with pytest.raises(ValueError, match=r"\(B, L, 128\)"):
        encoder(torch.zeros(1, 8, 64), eot)


def test_unsupported_tower_is_refused():
    with pytest.raises(ValueError, match="unsupported image tower"):
        ClipVisual(torch.nn.Linear(2, 2))


def test_mean_query_attention_pool_equals_open_clips_pool() -> None:
    """Attending from the mean token only gives open_clip's output and gradients (it discards the rest)."""
    torch.manual_seed(0)
    full = AttentionPool2d(4, 64, 4, 32)
    mean_query = copy.deepcopy(full)
    mean_query.__class__ = MeanQueryAttentionPool
    x = torch.randn(3, 64, 8, 4, requires_grad=True)
    x_copy = x.detach().clone().requires_grad_()
    full.positional_embedding = nn.Parameter(torch.randn(33, 64))
    mean_query.positional_embedding = nn.Parameter(full.positional_embedding.detach().clone())
    expected, got = full(x), mean_query(x_copy)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    expected.square().sum().backward()
    got.square().sum().backward()
    torch.testing.assert_close(x_copy.grad, x.grad, atol=1e-6, rtol=1e-5)
    for a, b in zip(full.parameters(), mean_query.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4)


def test_adapted_resnets_pool_from_the_mean_token() -> None:
    bundle = load_clip(ClipSource(arch="csdn-tiny-rn", pretrained=None, image_size=(64, 32)), "cpu")
    assert type(bundle.model.visual.attnpool) is MeanQueryAttentionPool
