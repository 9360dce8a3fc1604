"""csdn.synthvi.zeroshot: prompts, accuracy bookkeeping (golden values by hand), similarity maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

import csdn.synthvi.zeroshot as zeroshot
from csdn.clip.loader import ClipSource, load_clip
from csdn.synthvi.zeroshot import accuracy_table, prompts_for, similarity_matrix, zero_shot_attributes


@dataclass
class Pool:
    images: np.ndarray
    modalities: list[str]
    attributes: list[dict[str, str]]


def test_prompts_read_naturally():
    assert prompts_for("top_color", "red") == [
        "a photo of a person wearing a red top.",
        "a photo of a person wearing a red shirt.",
    ]
    assert prompts_for("bag", "none") == ["a photo of a person."]
    assert prompts_for("bag", "backpack") == ["a photo of a person carrying a backpack."]
    assert prompts_for("bottom_type", "skirt") == ["a photo of a person wearing a skirt."]
    with pytest.raises(KeyError, match="no prompt templates"):
        prompts_for("mood", "happy")


def test_accuracy_chance_and_majority_by_hand(monkeypatch):
    # 6 images; class features are the axes e0 (red), e1 (blue); image features point at a class.
    image_feats = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0], [0, 1], [1, 0]])
    pool = Pool(
        images=np.zeros((6, 4, 2, 3), np.uint8),
        modalities=["visible", "visible", "visible", "infrared", "infrared", "infrared"],
        attributes=[{"top_color": c} for c in ["red", "blue", "blue", "red", "red", "green"]],
    )
    monkeypatch.setattr(zeroshot, "image_features", lambda bundle, images: image_feats)
    monkeypatch.setattr(zeroshot, "class_features", lambda bundle, attribute, values, t, p: torch.eye(2))
    table = zero_shot_attributes(None, pool, vocabulary={"top_color": ("red", "blue")})
    visible = table[table.modality == "visible"].iloc[0]
    infrared = table[table.modality == "infrared"].iloc[0]
    # visible: predictions red, blue, red vs truth red, blue, blue -> 2/3; majority blue 2/3
    assert visible.accuracy == pytest.approx(2 / 3) and visible.majority == pytest.approx(2 / 3)
    assert visible.n == 3 and visible.chance == pytest.approx(0.5)
    # infrared: "green" is not a candidate, left out; red->red right, red->blue wrong -> 1/2
    assert infrared.accuracy == pytest.approx(0.5) and infrared.n == 2 and infrared.majority == pytest.approx(1.0)
    pivot = accuracy_table(table)
    assert pivot.loc["top_color", "visible"] == pytest.approx(2 / 3)
    assert pivot.loc["top_color", "chance"] == pytest.approx(0.5)


def test_real_tiny_model_end_to_end_and_similarity_matrix():
    torch.manual_seed(0)
    bundle = load_clip(ClipSource("csdn-tiny-vit", None, (32, 16)))
    rng = np.random.default_rng(0)
    pool = Pool(
        images=rng.integers(0, 255, size=(4, 32, 16, 3), dtype=np.uint8),
        modalities=["visible", "infrared"] * 2,
        attributes=[{"top_color": "red", "hat": "cap"}, {"top_color": "blue", "hat": "none"}] * 2,
    )
    table = zero_shot_attributes(bundle, pool, vocabulary={"top_color": ("red", "blue"), "hat": ("none", "cap")})
    assert set(table.attribute) == {"top_color", "hat"} and set(table.modality) == {"visible", "infrared"}
    assert table.accuracy.between(0, 1).all() and (table.n == 2).all()
    sims = similarity_matrix(bundle, pool.images, ["a red top.", "a blue top.", "a cap."])
    assert sims.shape == (4, 3) and np.all(np.abs(sims) <= 1 + 1e-5)


def test_empty_pool_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        zero_shot_attributes(None, Pool(np.zeros((0, 4, 2, 3), np.uint8), [], []), vocabulary={"hat": ("none", "cap")})


def test_accuracy_table_and_chart_share_one_order_visible_first():
    import matplotlib

    matplotlib.use("Agg")
    from csdn.synthvi.zeroshot import plot_accuracy

    rows = [
        {"attribute": a, "modality": m, "accuracy": acc, "chance": 0.5, "majority": 0.6, "n": 4}
        for a, acc in (("bag", 0.7), ("hair", 0.6), ("top_color", 0.9))
        for m in ("infrared", "visible")
    ]
    results = pd.DataFrame(rows)
    table = accuracy_table(results, color_attributes=["top_color"])
    assert list(table.columns) == ["visible", "infrared", "chance"]
    assert list(table.index) == ["top_color", "bag", "hair"]
    fig = plot_accuracy(results, color_attributes=["top_color"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["top_color*", "bag", "hair"]
    assert [c.get_label() for c in ax.containers] == ["visible", "infrared"]
    assert "majority class (visible)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_title().startswith("Zero-shot attribute accuracy") and "colour attribute" in ax.get_xlabel()
