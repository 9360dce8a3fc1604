"""Zero-shot semantics of a CLIP: attribute classification from text prompts, and similarity maps.

Each attribute value becomes a class whose text feature is the mean of its prompts ("a photo of a
person wearing a red top.", ...); an image is assigned the class with the highest cosine similarity.
Accuracy per attribute and modality is reported next to chance (1 / number of classes) and the
majority-class rate of the evaluated images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from csdn.clip.loader import ClipBundle
from csdn.style import MODALITY_COLOURS
from csdn.synthvi.pool import ClipPool
from csdn.synthvi.world import ATTRIBUTES

# Prompt templates per attribute; "{}" receives the value's phrase (see DEFAULT_PHRASES).
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "top_color": ("a photo of a person wearing a {} top.", "a photo of a person wearing a {} shirt."),
    "bottom_color": (
        "a photo of a person wearing {} trousers.",
        "a photo of a person wearing {} shorts.",
        "a photo of a person wearing a {} skirt.",
    ),
    "shoes_color": ("a photo of a person wearing {} shoes.",),
    "bag_color": ("a photo of a person carrying a {} backpack.", "a photo of a person carrying a {} handbag."),
    "top_pattern": ("a photo of a person wearing a {} top.", "a photo of a person wearing a {} shirt."),
    "sleeve": ("a photo of a person wearing a {}-sleeved top.", "a photo of a person wearing a {}-sleeved shirt."),
    "bottom_type": ("a photo of a person wearing {}.",),
    "bag": ("a photo of a person {}.",),
    "hat": ("a photo of a person {}.",),
    "hair": ("a photo of a person with {} hair.",),
    "height": ("a photo of a {} person.", "a photo of a {} pedestrian."),
    "build": ("a photo of a {} person.", "a photo of a {} pedestrian."),
}

# Value -> phrase where the bare value does not read well in its template (others are used as is).
DEFAULT_PHRASES: dict[str, dict[str, str]] = {
    "bottom_type": {"skirt": "a skirt"},
    "bag": {"none": "", "backpack": "carrying a backpack", "handbag": "carrying a handbag"},
    "hat": {"none": "", "cap": "wearing a cap"},
    "height": {"average": "medium-height"},
    "build": {"average": "medium-build"},
}


def prompts_for(
    attribute: str,
    value: str,
    templates: Mapping[str, Sequence[str]] = DEFAULT_TEMPLATES,
    phrases: Mapping[str, Mapping[str, str]] = DEFAULT_PHRASES,
) -> list[str]:
    """The prompts describing ``attribute == value`` (whitespace tidied when a phrase is empty)."""
    if attribute not in templates:
        raise KeyError(f"no prompt templates for attribute {attribute!r}; pass templates={{{attribute!r}: (...)}}")
    phrase = phrases.get(attribute, {}).get(value, value)
    return [" ".join(t.format(phrase).split()).replace(" .", ".") for t in templates[attribute]]


@torch.no_grad()
def image_features(bundle: ClipBundle, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised projected features (N, D) of uint8 images (N, H, W, 3), on the CPU."""
    bundle.model.eval()
    chunks = [
        bundle.model.encode_image(bundle.to_input(images[i : i + batch_size])).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def text_features(bundle: ClipBundle, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised projected features (N, D) of ``texts``, on the CPU."""
    bundle.model.eval()
    device = next(bundle.model.parameters()).device
    tokens = bundle.tokenizer(list(texts)).to(device)
    return F.normalize(bundle.model.encode_text(tokens).float().cpu(), dim=-1)


def similarity_matrix(bundle: ClipBundle, images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Cosine similarity (n_images, n_texts) between images and texts, for heatmaps."""
    return (image_features(bundle, images) @ text_features(bundle, texts).t()).numpy()


def class_features(
    bundle: ClipBundle,
    attribute: str,
    values: Sequence[str],
    templates: Mapping[str, Sequence[str]] = DEFAULT_TEMPLATES,
    phrases: Mapping[str, Mapping[str, str]] = DEFAULT_PHRASES,
) -> torch.Tensor:
    """One normalised text feature per value: the mean over that value's prompts."""
    features = [text_features(bundle, prompts_for(attribute, v, templates, phrases)).mean(dim=0) for v in values]
    return F.normalize(torch.stack(features), dim=-1)


def zero_shot_attributes(
    bundle: ClipBundle,
    pool: ClipPool,
    templates: Mapping[str, Sequence[str]] = DEFAULT_TEMPLATES,
    vocabulary: Mapping[str, Sequence[str]] | None = None,
    phrases: Mapping[str, Mapping[str, str]] = DEFAULT_PHRASES,
) -> pd.DataFrame:
    """Zero-shot attribute accuracy per attribute and modality.

    ``pool`` has ``images``, ``modalities`` and ``attributes`` (a SynthVI ``ClipPool``); ``vocabulary``
    maps attribute -> candidate values (default: SynthVI's ``ATTRIBUTES``, restricted to attributes
    with templates). Images whose value is not a candidate (e.g. ``bag_color`` without a bag) are left
    out of that attribute. Columns: attribute, modality, accuracy, chance, majority, n.
    """
    if vocabulary is None:
        vocabulary = {a: v for a, v in ATTRIBUTES.items() if a in templates}
    if len(pool.images) == 0:
        raise ValueError("the pool has no images to evaluate")
    feats = image_features(bundle, pool.images)
    modalities = np.asarray(pool.modalities)
    rows = []
    for attribute, values in vocabulary.items():
        values = list(values)
        if len(values) < 2:
            continue
        labels = np.array([values.index(a[attribute]) if a.get(attribute) in values else -1 for a in pool.attributes])
        predictions = (feats @ class_features(bundle, attribute, values, templates, phrases).t()).argmax(dim=1).numpy()
        for modality in sorted(set(modalities.tolist())):
            keep = (modalities == modality) & (labels >= 0)
            if not keep.any():
                continue
            counts = np.bincount(labels[keep], minlength=len(values))
            rows.append(
                {
                    "attribute": attribute,
                    "modality": modality,
                    "accuracy": float((predictions[keep] == labels[keep]).mean()),
                    "chance": 1.0 / len(values),
                    "majority": float(counts.max() / counts.sum()),
                    "n": int(keep.sum()),
                }
            )
    return pd.DataFrame(rows, columns=["attribute", "modality", "accuracy", "chance", "majority", "n"])


def accuracy_table(results: pd.DataFrame, color_attributes: Sequence[str] = ()) -> pd.DataFrame:
    """Pivot of :func:`zero_shot_attributes`: one row per attribute (the ``color_attributes`` first, as
    :func:`plot_accuracy` draws them), the accuracy per modality (visible, then infrared), and chance."""
    table = results.pivot(index="attribute", columns="modality", values="accuracy")
    table = table[[m for m in ("visible", "infrared") if m in table.columns]]
    table.columns.name = None
    order = [a for a in table.index if a in color_attributes] + [a for a in table.index if a not in color_attributes]
    table = table.loc[order]
    table["chance"] = results.groupby("attribute")["chance"].first()
    return table


def examples_per_value(pool: ClipPool, attribute: str, modality: str, values: Sequence[str]) -> list[int]:
    """Index of the first image of ``modality`` for each value of ``attribute`` (values without one skipped)."""
    picked = []
    for value in values:
        for i, (attrs, m) in enumerate(zip(pool.attributes, pool.modalities)):
            if m == modality and attrs.get(attribute) == value:
                picked.append(i)
                break
    return picked


def plot_accuracy(results: pd.DataFrame, color_attributes: Sequence[str] = ()):
    """Bar chart of zero-shot accuracy per attribute, one bar per modality (the shared modality palette; the
    attributes in :func:`accuracy_table`'s order), chance as a black tick and the majority-class rate of the
    visible images (always answering their commonest value) as a grey one: only bars above the grey tick beat
    that trivial baseline. Colour attributes are starred, and a note under the axis says what the star means."""
    import matplotlib.pyplot as plt

    table = accuracy_table(results, color_attributes)
    modalities = [m for m in ("visible", "infrared") if m in table.columns]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(table)), 3.8))
    width = 0.8 / len(modalities)
    x = np.arange(len(table))
    for k, modality in enumerate(modalities):
        offset = (k - (len(modalities) - 1) / 2) * width
        ax.bar(x + offset, table[modality], width, label=modality, color=MODALITY_COLOURS[modality])
    majority = results[results.modality == modalities[0]].set_index("attribute")["majority"].reindex(table.index)
    ax.scatter(x, table["chance"], marker="_", s=400, color="black", label="chance", zorder=3)
    ax.scatter(x, majority, marker="_", s=400, color="#888888", label=f"majority class ({modalities[0]})", zorder=3)
    ax.set_xticks(x, [f"{a}*" if a in color_attributes else a for a in table.index], rotation=30, ha="right")
    ax.set_ylabel("zero-shot accuracy")
    ax.set_ylim(0, 1.2)  # headroom above 1 for the legend, which then never hides a bar
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(loc="upper right", ncols=4, fontsize="small")
    ax.set_title("Zero-shot attribute accuracy on held-out identities, visible vs infrared images")
    if any(a in color_attributes for a in table.index):
        ax.set_xlabel("* a colour attribute: invisible in infrared images", fontsize="small", loc="right")
    fig.tight_layout()
    return fig


def plot_similarity(
    images: np.ndarray,
    texts: Sequence[str],
    similarity: np.ndarray,
    title: str = "",
    labels: Sequence[str] | None = None,
    limits: tuple[float, float] | None = None,
):
    """Heatmap of image-text cosine similarity with the images shown above their columns; ``labels`` name
    the columns (default: their index) and ``limits`` fix the colour scale, so that two heatmaps drawn with
    the same limits can be compared by eye."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig = plt.figure(figsize=(1.0 * n + 3.5, 0.45 * len(texts) + 2.2))
    grid = fig.add_gridspec(2, n, height_ratios=[1.6, 0.45 * len(texts)], hspace=0.05)
    for i, image in enumerate(images):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(image)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    vmin, vmax = limits if limits is not None else (None, None)
    im = ax.imshow(similarity.T, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_yticks(range(len(texts)), texts, fontsize=8)
    ax.set_xticks(range(n), labels if labels is not None else [str(i) for i in range(n)], rotation=30, ha="right")
    ax.set_xlabel("image (true value)" if labels is not None else "image")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="cosine similarity")
    if title:
        fig.suptitle(title)
    return fig
