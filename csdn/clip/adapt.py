"""Adapting an open_clip CLIP to person crops, and the pieces of it that CSDN taps.

Rectangular input (e.g. 288x144, 256x128):

* **ModifiedResNet** (RN50, csdn-tiny-rn): the first block of ``layer4`` gets stride 1 (as in CLIP-ReID
  and the CSDN code), so the final map is 1/16 of the input (18x9 at 288x144), and the attention-pool
  positional embedding is resized from its grid to that map.
* **VisionTransformer** (ViT-B-16, csdn-tiny-vit): the positional grid is interpolated from the
  checkpoint's grid to ``(H / patch, W / patch)``; the class-token embedding is kept as is.

Grids are resized bicubically by default; the release (and CLIP-ReID) resize bilinearly
(``grid_interpolation="bilinear"``, ``align_corners=False``), which the real-data profiles follow.

The pieces: :class:`ClipVisual` splits the image tower into a *stem* (RN: conv1..bn3 + relu + avgpool;
ViT: the patch-embedding convolution only) and a shared *trunk* (everything after), so the model code
can deep-copy the stem once per modality. For the ViT the class token, positional embedding and ``ln_pre``
belong to the trunk: the stem output is an NCHW patch grid just like the ResNet stem output, and the
modality-specific part is exactly the pixel-to-token projection. :class:`TextEncoder` is the frozen text
tower that runs on prompt *embeddings* (for learnable prompts).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

RESNET = "resnet"
VIT = "vit"
GRID_INTERPOLATIONS = ("bicubic", "bilinear")  # torch.nn.functional.interpolate modes for positional grids


def visual_kind(visual: nn.Module) -> str:
    """``"resnet"`` or ``"vit"`` for an open_clip image tower; a clear error for any other tower."""
    if isinstance(visual, ModifiedResNet):
        return RESNET
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            raise ValueError("only ViTs pooled by their class token (CLIP's layout) are supported")
        return VIT
    raise ValueError(
        f"unsupported image tower {type(visual).__name__}: csdn handles open_clip ModifiedResNet (RN50 family) "
        "and VisionTransformer (ViT-B-16 family) towers"
    )


# ----------------------------------------------------------------------------------------------------
# Geometry


def resize_grid_embedding(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a ``(1 + gh*gw, C)`` positional embedding (first row = class/mean token) to a new grid by
    ``mode`` interpolation (:data:`GRID_INTERPOLATIONS`, ``align_corners=False``)."""
    if mode not in GRID_INTERPOLATIONS:
        raise ValueError(f"mode must be one of {GRID_INTERPOLATIONS}, got {mode!r}")
    if pos.shape[0] != 1 + old_grid[0] * old_grid[1]:
        raise ValueError(f"positional embedding of {pos.shape[0]} rows does not fit a {old_grid} grid plus one token")
    if tuple(old_grid) == tuple(new_grid):
        return pos
    token, grid = pos[:1], pos[1:]
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([token, grid], dim=0)


def resnet_grid(image_size: tuple[int, int], last_stride: int) -> tuple[int, int]:
    """Final feature-map size of a ModifiedResNet for an input of ``image_size`` (H, W)."""

    def side(n: int) -> int:
        n = (n - 1) // 2 + 1  # conv1: 3x3, stride 2, padding 1
        n //= 2  # stem average pool
        n //= 2  # layer2
        n //= 2  # layer3
        return n // last_stride  # layer4

    return side(image_size[0]), side(image_size[1])


def resnet_last_stride(visual: ModifiedResNet) -> int:
    """The current stride of ``layer4`` (2 as built by open_clip, 1 after re-ID adaptation)."""
    pool = visual.layer4[0].avgpool
    return pool.kernel_size if isinstance(pool, nn.AvgPool2d) else 1


def _set_resnet_last_stride(visual: ModifiedResNet, stride: int) -> None:
    """Give layer4's first block ``stride`` (1 or 2); weights are untouched (CLIP's blocks pool, not stride)."""
    if stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {stride}")
    block = visual.layer4[0]
    block.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
    block.stride = stride
    if block.downsample is not None:
        block.downsample._modules["-1"] = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()


def current_image_size(visual: nn.Module) -> tuple[int, int]:
    """The (H, W) an image tower is currently built for."""
    size = visual.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def adapt_visual(
    visual: nn.Module, image_size: tuple[int, int], last_stride: int = 1, grid_interpolation: str = "bicubic"
) -> None:
    """Adapt an image tower in place to ``image_size`` (H, W); ``last_stride`` applies to ResNets only, and
    ``grid_interpolation`` is how a positional grid of another size is resized."""
    height, width = int(image_size[0]), int(image_size[1])
    if visual_kind(visual) == RESNET:
        old_grid = resnet_grid(current_image_size(visual), resnet_last_stride(visual))
        _set_resnet_last_stride(visual, last_stride)
        new_grid = resnet_grid((height, width), last_stride)
        if min(new_grid) < 1:
            raise ValueError(f"image size {image_size} is too small for a ModifiedResNet (final map {new_grid})")
        pool = visual.attnpool
        if type(pool) is AttentionPool2d:
            pool.__class__ = MeanQueryAttentionPool  # same parameters, only the output it returns computed
        pool.positional_embedding = nn.Parameter(
            resize_grid_embedding(pool.positional_embedding.data, old_grid, new_grid, grid_interpolation),
            requires_grad=pool.positional_embedding.requires_grad,
        )
    else:
        patch_h, patch_w = visual.patch_size
        if height % patch_h or width % patch_w:
            raise ValueError(f"image size {image_size} must be a multiple of the ViT patch size {visual.patch_size}")
        new_grid = (height // patch_h, width // patch_w)
        visual.positional_embedding = nn.Parameter(
            resize_grid_embedding(
                visual.positional_embedding.data, tuple(visual.grid_size), new_grid, grid_interpolation
            ),
            requires_grad=visual.positional_embedding.requires_grad,
        )
        visual.grid_size = new_grid
    visual.image_size = (height, width)


def feature_grid(visual: nn.Module) -> tuple[int, int]:
    """The (h, w) of the trunk's feature map for the tower's current input size."""
    if visual_kind(visual) == RESNET:
        return resnet_grid(current_image_size(visual), resnet_last_stride(visual))
    return tuple(visual.grid_size)


# ----------------------------------------------------------------------------------------------------
# Image side: stem / trunk


class VisualFeatures(NamedTuple):
    """What the trunk produces for a batch."""

    feature_map: torch.Tensor  # (B, C, h, w): RN layer4 output / ViT patch tokens after ln_post (for GeM)
    pooled: torch.Tensor  # (B, C): RN global average of the map / ViT ln_post(class token)
    projected: torch.Tensor  # (B, embed_dim): RN attention pool / ViT ln_post(class token) @ proj (CLIP space)


class MeanQueryAttentionPool(AttentionPool2d):
    """open_clip's ``AttentionPool2d`` that attends from the mean token only, without projecting the tokens.

    open_clip's pool runs attention for every token of the map and returns the mean token's output; the
    other outputs are discarded. Attending from the mean token alone (as OpenAI's CLIP does) gives the same
    output for a fraction of the work: at 128x64 the tiny RN's map has 32 tokens, so 1 query instead of 33.
    With one query the keys and values need not be computed per token either: a head's score of token ``t``
    is ``q . (W_k t + b_k) = (W_k^T q) . t + q . b_k``, and since its attention weights sum to one its output
    is ``W_v (sum_t a_t t) + b_v``. So the query is taken back to the tokens' width, the tokens are pooled,
    and only the pooled token is projected (the ``q . b_k`` term is the same for every token and changes no
    weight; it is kept so that ``b_k`` gets the gradient open_clip gives it). Equal to open_clip's pool in
    output and gradients up to rounding (tests/test_clip_adapt.py). :func:`adapt_visual` gives every adapted
    ResNet this pool (same parameters and state-dict keys).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)  # (N, L, C), the mean token first
        batch, width = tokens.shape[0], tokens.shape[2]
        heads = self.num_heads
        head_dim = width // heads
        query = self.q_proj(tokens[:, 0]).view(batch, heads, head_dim) * head_dim**-0.5  # (N, H, d)
        query_in = torch.einsum("nhd,hdc->nhc", query, self.k_proj.weight.view(heads, head_dim, width))
        key_bias = (query * self.k_proj.bias.view(heads, head_dim).to(query.dtype)).sum(dim=-1, keepdim=True)
        scores = torch.bmm(query_in, tokens.transpose(1, 2)) + key_bias  # (N, H, L)
        weights = scores.float().softmax(dim=-1).to(tokens.dtype)
        pooled = torch.bmm(weights, tokens)  # (N, H, C): each head's attention-weighted token
        values = torch.einsum("nhc,hdc->nhd", pooled, self.v_proj.weight.view(heads, head_dim, width))
        values = values + self.v_proj.bias.view(heads, head_dim).to(values.dtype)
        return self.c_proj(values.reshape(batch, width))


class _ResNetTrunk(nn.Module):
    """layer1..layer4 and the attention pool of a ModifiedResNet (shares its modules)."""

    def __init__(self, visual: ModifiedResNet):
        super().__init__()
        self.layer1, self.layer2, self.layer3, self.layer4 = visual.layer1, visual.layer2, visual.layer3, visual.layer4
        self.attnpool = visual.attnpool

    def forward(self, h: torch.Tensor) -> VisualFeatures:
        fmap = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return VisualFeatures(fmap, fmap.mean(dim=(2, 3)), self.attnpool(fmap))


class _ViTTrunk(nn.Module):
    """Class token, positional embedding, ln_pre, transformer, ln_post and proj of a CLIP ViT."""

    def __init__(self, visual: VisionTransformer):
        super().__init__()
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.patch_dropout = visual.patch_dropout
        self.ln_pre, self.transformer, self.ln_post = visual.ln_pre, visual.transformer, visual.ln_post
        self.proj = visual.proj

    def forward(self, h: torch.Tensor) -> VisualFeatures:
        batch, width, gh, gw = h.shape
        if self.positional_embedding.shape[0] != gh * gw + 1:
            raise ValueError(f"patch grid {gh}x{gw} does not match the positional embedding; adapt the model first")
        x = h.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(self.patch_dropout(x))
        x = self.ln_post(self.transformer(x))
        pooled, tokens = x[:, 0], x[:, 1:]
        fmap = tokens.transpose(1, 2).reshape(batch, width, gh, gw)
        return VisualFeatures(fmap, pooled, pooled @ self.proj)


def extract_stem(visual: nn.Module) -> nn.Module:
    """The stem of an image tower (shares the tower's modules; ``copy.deepcopy`` it for a private copy)."""
    if visual_kind(visual) == RESNET:
        return nn.Sequential(
            visual.conv1,
            visual.bn1,
            visual.act1,
            visual.conv2,
            visual.bn2,
            visual.act2,
            visual.conv3,
            visual.bn3,
            visual.act3,
            visual.avgpool,
        )
    return nn.Sequential(visual.conv1)


def extract_trunk(visual: nn.Module) -> nn.Module:
    """Everything after the stem; ``trunk(h)`` returns :class:`VisualFeatures`."""
    return _ResNetTrunk(visual) if visual_kind(visual) == RESNET else _ViTTrunk(visual)


class ClipVisual(nn.Module):
    """A CLIP image tower as stem + trunk (the modules are shared with the tower it was built from).

    ``forward(x)`` equals the tower's own forward for ``projected``; the model code replaces or copies
    ``self.stem`` per modality and calls :meth:`forward_stem` / :meth:`forward_trunk` itself.
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.kind = visual_kind(visual)
        self.stem = extract_stem(visual)
        self.trunk = extract_trunk(visual)
        self.image_size = current_image_size(visual)
        self.grid = feature_grid(visual)
        self.trunk_dim = visual.attnpool.k_proj.in_features if self.kind == RESNET else visual.proj.shape[0]
        self.embed_dim = visual.output_dim

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> stem output (B, C, h, w)."""
        return self.stem(x)

    def forward_trunk(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stem output -> (feature map (B, trunk_dim, h, w), projected feature (B, embed_dim))."""
        features = self.trunk(h)
        return features.feature_map, features.projected

    def features(self, x: torch.Tensor) -> VisualFeatures:
        """Images -> all trunk features (feature map, pooled, projected)."""
        return self.trunk(self.stem(x))

    def forward(self, x: torch.Tensor) -> VisualFeatures:
        return self.features(x)


# ----------------------------------------------------------------------------------------------------
# Text side


class TextEncoder(nn.Module):
    """CLIP's frozen text tower, run on token *embeddings* so prompt learners can supply their own.

    ``forward(prompt_embeddings (B, L, width), eot_indices (B,)) -> (B, embed_dim)``: adds the positional
    embedding, runs the transformer under the causal mask, applies ``ln_final``, takes the EOT token and
    projects. ``L`` may be at most the context length (the causal mask makes positions after the EOT
    token irrelevant, so batches may be trimmed to their longest prompt). ``token_embedding`` and
    ``tokenizer`` are exposed for building prompts. ``frozen=False`` keeps the parameters trainable
    (used by the tiny-CLIP pretraining only).
    """

    def __init__(self, model: CLIP, tokenizer=None, frozen: bool = True):
        super().__init__()
        if not isinstance(model, CLIP):
            raise ValueError(
                f"TextEncoder needs an open_clip CLIP with the built-in text tower, got {type(model).__name__}"
            )
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.context_length = int(model.positional_embedding.shape[0])
        self.width = int(model.positional_embedding.shape[1])
        projection = model.text_projection
        self.embed_dim = int(projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1])
        if frozen:
            for param in self.parameters():
                param.requires_grad_(False)

    def forward(self, prompt_embeddings: torch.Tensor, eot_indices: torch.Tensor) -> torch.Tensor:
        length = prompt_embeddings.shape[1]
        if prompt_embeddings.ndim != 3 or prompt_embeddings.shape[2] != self.width:
            raise ValueError(f"prompt embeddings must be (B, L, {self.width}), got {tuple(prompt_embeddings.shape)}")
        if length > self.context_length:
            raise ValueError(f"prompt length {length} exceeds the context length {self.context_length}")
        x = prompt_embeddings + self.positional_embedding[:length].to(prompt_embeddings.dtype)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        x = x[torch.arange(x.shape[0], device=x.device), eot_indices.to(x.device).long()]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, context_length) of ``texts`` with the tower's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this TextEncoder has no tokenizer; pass one to TextEncoder(model, tokenizer)")
        return self.tokenizer(list(texts))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> projected features, trimmed to the longest sequence (equals ``encode_text``)."""
        tokens = tokens.to(self.positional_embedding.device)
        length = int(tokens.argmax(dim=1).max()) + 1  # EOT is the largest token id of each row
        tokens = tokens[:, :length]
        return self(self.token_embedding(tokens), tokens.argmax(dim=-1))

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Plain texts -> projected text features (B, embed_dim), equal to ``CLIP.encode_text``."""
        return self.encode_tokens(self.tokenize(texts))
