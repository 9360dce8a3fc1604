"""Dataset statistics: splits, cameras and raw pixel statistics per modality (pandas tables)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from csdn.data.protocol import Reader, SplitOptions
from csdn.data.records import MODALITIES, Record

# The test protocols a split table shows: every direction and mode, single- and multi-shot galleries.
ALL_SPLITS = SplitOptions(trials=1, shots=(1, 10))


def splits(reader: Reader, trial: int = 0) -> dict[str, list[Record]]:
    """The named record lists of a reader: train, the validation query and gallery (if any), and each
    test split's query (one ``query`` when every split shares it) and gallery of ``trial``."""
    out = {"train": list(reader.train)}
    validation = reader.validation()
    if validation is not None:
        out["val query"], out["val gallery"] = list(validation.query), validation.gallery(trial)
    tests = reader.test_splits(ALL_SPLITS)
    shared = all(split.query == tests[0].query for split in tests)
    for split in tests:
        out["query" if shared else f"query {split.name}"] = list(split.query)
        out[f"gallery {split.name}"] = split.gallery(trial)
    return out


def split_table(reader: Reader, trial: int = 0) -> pd.DataFrame:
    """One row per (split, modality): identities, images and cameras."""
    rows = []
    for name, records in splits(reader, trial).items():
        for modality in MODALITIES:
            sub = [r for r in records if r.modality == modality]
            if sub:
                rows.append(
                    {
                        "split": name,
                        "modality": modality,
                        "ids": len({r.pid for r in sub}),
                        "images": len(sub),
                        "cams": ",".join(str(c) for c in sorted({r.cam for r in sub})),
                    }
                )
    return pd.DataFrame(rows)


def camera_table(records: Sequence[Record]) -> pd.DataFrame:
    """One row per camera: modality, identities, images and images per identity (an integer column when every
    camera has a whole number per identity, else to two decimals)."""
    frame = pd.DataFrame([{"cam": r.cam, "modality": r.modality, "pid": r.pid} for r in records])
    if frame.empty:
        return pd.DataFrame(columns=["cam", "modality", "ids", "images", "images_per_id"])
    table = frame.groupby(["cam", "modality"]).agg(ids=("pid", "nunique"), images=("pid", "size")).reset_index()
    per_id = table["images"] / table["ids"]
    whole = bool((per_id == per_id.round()).all())  # a whole number of images per identity: shown as one
    table["images_per_id"] = per_id.round().astype(int) if whole else per_id.round(2)
    return table


def pixel_statistics(images: np.ndarray, modalities: Sequence[str]) -> pd.DataFrame:
    """Raw pixel statistics per modality of uint8 images ``(N, H, W, 3)``.

    Columns: mean and std of each channel (0..255), overall brightness, and *colourfulness* (mean
    absolute difference between channels: 0 for grayscale images, which infrared images are), each to one
    decimal.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(modalities):
        raise ValueError(f"need (N, H, W, 3) images and N modalities, got {images.shape} and {len(modalities)}")
    mods = np.asarray(modalities)
    rows = []
    for modality in MODALITIES:
        sub = images[mods == modality].astype(np.float32)
        if not len(sub):
            continue
        r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
        colourfulness = (np.abs(r - g) + np.abs(g - b) + np.abs(r - b)).mean() / 3
        rows.append(
            {
                "modality": modality,
                "images": len(sub),
                "mean_r": float(r.mean()),
                "mean_g": float(g.mean()),
                "mean_b": float(b.mean()),
                "std_r": float(r.std()),
                "std_g": float(g.std()),
                "std_b": float(b.std()),
                "brightness": float(sub.mean()),
                "colourfulness": float(colourfulness),
            }
        )
    return pd.DataFrame(rows).round(1)
