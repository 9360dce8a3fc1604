"""SynthVI: a procedural world of pedestrians seen by visible and infrared cameras.

What exists lives here: the attribute vocabulary, the generator config, identities (discrete attributes
plus hidden continuous rendering parameters) and captions. The cameras are in :mod:`csdn.synthvi.cameras`,
how a person looks (scenes, drawing) in :mod:`csdn.synthvi.render`, the on-disk dataset layouts in
:mod:`csdn.synthvi.layouts` and the CLIP pretraining pool in :mod:`csdn.synthvi.pool`.

Everything derives from ``SynthConfig.seed``: the same seed gives identical identities and identical
image bytes. Each image has its own random generator seeded by ``(seed, purpose, pid, camera, index)``,
so an image does not depend on which other images were rendered before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from csdn.data.records import MODALITIES, VISIBLE
from csdn.errors import ConfigError
from csdn.synthvi.cameras import LLCM_NIR_CAMS

# The attribute vocabulary: every identity takes one value per attribute.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "build": ("slim", "average", "heavy"),
    "height": ("short", "average", "tall"),
    "hair": ("short", "long"),
    "top_color": ("red", "blue", "green", "yellow", "white", "black", "gray", "purple"),
    "top_pattern": ("plain", "striped", "checked"),
    "sleeve": ("short", "long"),
    "bottom_type": ("trousers", "shorts", "skirt"),
    "bottom_color": ("black", "blue", "gray", "white", "brown", "red"),
    "shoes_color": ("black", "white", "brown", "gray"),
    "bag": ("none", "backpack", "handbag"),
    "bag_color": ("black", "brown", "red", "blue", "gray"),
    "hat": ("none", "cap"),
}

# Attributes that only a visible camera can see (infrared renders material and heat, not colour).
COLOR_ATTRIBUTES: tuple[str, ...] = ("top_color", "bottom_color", "shoes_color", "bag_color")

# Every colour word of the vocabulary (none of them may appear in an infrared caption).
COLOR_WORDS: frozenset[str] = frozenset(v for a in COLOR_ATTRIBUTES for v in ATTRIBUTES[a])

# The value an attribute takes when it does not apply (``bag_color`` of an identity without a bag).
NOT_APPLICABLE = "none"

# Sampling weights where uniform would be implausible (attribute -> weights aligned with ATTRIBUTES).
_WEIGHTS: dict[str, tuple[float, ...]] = {
    "build": (0.3, 0.45, 0.25),
    "height": (0.3, 0.4, 0.3),
    "top_pattern": (0.5, 0.3, 0.2),
    "bottom_type": (0.55, 0.25, 0.2),
    "bag": (0.4, 0.35, 0.25),
    "hat": (0.75, 0.25),
}

# Random-stream purposes (the second element of every seed tuple), so streams never collide.
_PURPOSE_POOLS, _PURPOSE_IDENTITY = 1, 2
PURPOSE_CLIP, PURPOSE_HELDOUT, PURPOSE_SYSU, PURPOSE_REGDB, PURPOSE_LLCM = 10, 11, 12, 13, 14


@dataclass(frozen=True)
class SynthConfig:
    """How big the embedded world is. Defaults are the demo scale (about SYSU-MM01's test scale)."""

    seed: int = 0  # master seed: identities, pools, splits and every pixel derive from it
    height: int = 128  # image height in pixels
    width: int = 64  # image width in pixels
    clip_ids: int = 400  # identities in the CLIP pretraining pool (disjoint from re-ID ids)
    train_ids: int = 200  # re-ID training identities (SYSU: train + val; LLCM: train)
    val_ids: int = 40  # how many of the training identities SYSU's exp/val_id.txt lists (>= 1)
    test_ids: int = 96  # re-ID test identities
    images_per_cam: int = 4  # images per identity per camera in the SYSU and LLCM layouts
    llcm_cams_per_id: int = 4  # LLCM cameras an identity is seen by, per modality (of 9 / 8)
    clip_images_per_id: int = 8  # images per identity in the CLIP pool (and in the held-out pool)
    clip_infrared_fraction: float = 0.3  # fraction of CLIP-pool images rendered infrared
    regdb_images: int = 10  # images per identity per modality in the RegDB layout (10 in RegDB)
    regdb_trials: int = 10  # random train/test splits written to RegDB's idx/ (10 in RegDB)
    jpeg_quality: int = 90  # JPEG quality of the SYSU and LLCM images

    def __post_init__(self) -> None:
        positive = (
            "height",
            "width",
            "clip_ids",
            "train_ids",
            "test_ids",
            "images_per_cam",
            "llcm_cams_per_id",
            "clip_images_per_id",
            "regdb_images",
            "regdb_trials",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.height < 16 or self.width < 8:
            raise ConfigError(f"SynthConfig height x width = {self.height}x{self.width} is too small (min 16x8)")
        if not 1 <= self.val_ids < self.train_ids:  # exp/val_id.txt must list at least one id
            raise ConfigError(f"SynthConfig.val_ids must be in [1, train_ids={self.train_ids}), got {self.val_ids}")
        if not 0.0 <= self.clip_infrared_fraction <= 1.0:
            raise ConfigError(
                f"SynthConfig.clip_infrared_fraction must be in [0, 1], got {self.clip_infrared_fraction}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"SynthConfig.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.llcm_cams_per_id > len(LLCM_NIR_CAMS):
            raise ConfigError(
                f"SynthConfig.llcm_cams_per_id must be <= {len(LLCM_NIR_CAMS)}, got {self.llcm_cams_per_id}"
            )


@dataclass(frozen=True)
class RenderParams:
    """The hidden continuous look of an identity: what makes two people with equal attributes differ."""

    figure: float  # person height as a fraction of the image height
    shoulder: float  # shoulder half-width relative to the person height
    hip: float  # hip half-width relative to the person height
    head: float  # head half-height relative to the person height
    limb: float  # arm / leg thickness factor
    skin_rgb: tuple[float, float, float]  # skin colour (0..1)
    hair_rgb: tuple[float, float, float]  # hair colour (0..1)
    hat_rgb: tuple[float, float, float]  # cap colour (0..1; not an attribute)
    color_gain: dict[str, tuple[float, float, float]]  # per colour attribute: RGB gain on the named colour
    pattern_period: float  # stripe / check period relative to the person height
    pattern_light: bool  # stripes lighter (True) or darker than the garment
    hair_volume: float  # how far hair extends (0..1)
    bag_size: float  # bag size factor
    bag_side: int  # -1 / +1: the side a handbag hangs on
    thermal: dict[str, float]  # material -> thermal intensity (0..1), colour-free
    nir: dict[str, float]  # material -> near-infrared reflectance (0..1), colour-free


@dataclass(frozen=True)
class Identity:
    """One person of SynthVI: dataset pid, discrete attributes, hidden rendering parameters."""

    pid: int  # identity number as written in the datasets (unique across all pools)
    attributes: dict[str, str]  # attribute name -> value, keys exactly those of ATTRIBUTES
    params: RenderParams = field(repr=False)  # hidden continuous look


def _choice(rng: np.random.Generator, name: str) -> str:
    values = ATTRIBUTES[name]
    weights = np.asarray(_WEIGHTS.get(name, (1.0,) * len(values)), dtype=float)
    return values[int(rng.choice(len(values), p=weights / weights.sum()))]


def _sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    attrs = {name: _choice(rng, name) for name in ATTRIBUTES}
    if attrs["bag"] == "none":
        attrs["bag_color"] = NOT_APPLICABLE
    return attrs


def _sample_params(rng: np.random.Generator, attrs: dict[str, str]) -> RenderParams:
    figure = {"short": 0.78, "average": 0.84, "tall": 0.9}[attrs["height"]] + rng.normal(0, 0.012)
    build = {"slim": 0.0, "average": 1.0, "heavy": 2.0}[attrs["build"]]
    skin_tone = rng.uniform(0.0, 1.0)  # light to dark, a continuous hidden parameter
    skin = np.array([0.93, 0.76, 0.64]) * (1 - 0.55 * skin_tone) + np.array([0.02, 0.01, 0.0])
    hair_base = [(0.07, 0.06, 0.05), (0.25, 0.15, 0.08), (0.45, 0.3, 0.15), (0.75, 0.62, 0.4)]
    hair = np.array(hair_base[int(rng.choice(4, p=[0.5, 0.3, 0.12, 0.08]))]) * rng.uniform(0.85, 1.15)
    hats = [(0.1, 0.1, 0.12), (0.85, 0.85, 0.85), (0.7, 0.15, 0.12), (0.15, 0.25, 0.55), (0.5, 0.45, 0.3)]
    gains = {a: tuple(float(g) for g in np.exp(rng.normal(0, 0.07, 3) + rng.normal(0, 0.1))) for a in COLOR_ATTRIBUTES}
    top_warmth = 0.66 if attrs["sleeve"] == "short" else 0.56  # thin short sleeves pass more body heat
    thermal = {
        "skin": rng.uniform(0.86, 0.97),
        "hair": rng.uniform(0.45, 0.6),
        "top": top_warmth + rng.normal(0, 0.04),
        "bottom": {"shorts": 0.62, "skirt": 0.64, "trousers": 0.55}[attrs["bottom_type"]] + rng.normal(0, 0.04),
        "shoes": rng.uniform(0.28, 0.4),
        "bag": rng.uniform(0.15, 0.28),
        "hat": rng.uniform(0.38, 0.5),
    }
    thermal["pattern"] = thermal["top"] + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.16)
    nir = {
        "skin": rng.uniform(0.7, 0.85),
        "hair": rng.uniform(0.2, 0.35),
        "top": rng.uniform(0.4, 0.8),
        "bottom": rng.uniform(0.3, 0.7),
        "shoes": rng.uniform(0.15, 0.35),
        "bag": rng.uniform(0.2, 0.5),
        "hat": rng.uniform(0.3, 0.7),
    }
    nir["pattern"] = nir["top"] + (-0.2 if nir["top"] > 0.6 else 0.2)
    return RenderParams(
        figure=float(figure),
        shoulder=float(0.105 + 0.017 * build + rng.normal(0, 0.005)),
        hip=float(0.085 + 0.014 * build + rng.normal(0, 0.004)),
        head=float(0.062 + rng.normal(0, 0.003)),
        limb=float(0.85 + 0.15 * build + rng.normal(0, 0.04)),
        skin_rgb=tuple(float(c) for c in skin),
        hair_rgb=tuple(float(c) for c in np.clip(hair, 0, 1)),
        hat_rgb=tuple(float(c) for c in hats[int(rng.integers(len(hats)))]),
        color_gain=gains,
        pattern_period=float(rng.uniform(0.025, 0.045)),
        pattern_light=bool(rng.random() < 0.5),
        hair_volume=float(rng.uniform(0.0, 1.0)),
        bag_size=float(rng.uniform(0.85, 1.15)),
        bag_side=int(rng.choice([-1, 1])),
        thermal={k: float(np.clip(v, 0.0, 1.0)) for k, v in thermal.items()},
        nir={k: float(np.clip(v, 0.0, 1.0)) for k, v in nir.items()},
    )


def _make_identity(seed: int, pid: int) -> Identity:
    rng = np.random.default_rng([seed, _PURPOSE_IDENTITY, pid])
    attrs = _sample_attributes(rng)
    return Identity(pid=pid, attributes=attrs, params=_sample_params(rng, attrs))


def make_identities(cfg: SynthConfig) -> dict[str, list[Identity]]:
    """The three disjoint identity pools ``"clip"``, ``"train"``, ``"test"`` (each sorted by pid).

    Re-ID pids are a seeded shuffle of ``1..train_ids + test_ids`` (so train and test ids interleave, as
    in SYSU-MM01); CLIP-pool pids follow after them.
    """
    n_reid = cfg.train_ids + cfg.test_ids
    order = np.random.default_rng([cfg.seed, _PURPOSE_POOLS]).permutation(n_reid) + 1
    pids = {
        "clip": list(range(n_reid + 1, n_reid + cfg.clip_ids + 1)),
        "train": sorted(int(p) for p in order[: cfg.train_ids]),
        "test": sorted(int(p) for p in order[cfg.train_ids :]),
    }
    return {pool: [_make_identity(cfg.seed, pid) for pid in ps] for pool, ps in pids.items()}


def image_rng(seed: int, purpose: int, pid: int, cam: int, index: int) -> np.random.Generator:
    """The random generator of one image, independent of every other image."""
    return np.random.default_rng([seed, purpose, pid, cam, index])


# ----------------------------------------------------------------------------------------------------
# Captions


# How a caption words a body attribute ("average" alone would read ambiguously).
BODY_PHRASES: dict[str, dict[str, str]] = {
    "height": {"short": "short", "average": "medium-height", "tall": "tall"},
    "build": {"slim": "slim", "average": "medium-build", "heavy": "heavy"},
}


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _join(words: Sequence[str]) -> str:
    return " ".join(w for w in words if w)


def _caption_parts(a: dict[str, str], with_color: bool, rng: np.random.Generator) -> dict[str, str]:
    """Noun phrases for each attribute group; colour words only when ``with_color``."""
    color = (lambda name: a[name]) if with_color else (lambda name: "")
    pattern = a["top_pattern"] if a["top_pattern"] != "plain" or rng.random() < 0.3 else ""
    sleeve = "short-sleeved" if a["sleeve"] == "short" else "long-sleeved"
    noun = str(rng.choice(["top", "shirt"]))
    top = _article(_join([color("top_color"), pattern, sleeve, noun]))
    bottom_words = _join([color("bottom_color"), a["bottom_type"]])
    bottom = _article(bottom_words) if a["bottom_type"] == "skirt" else bottom_words
    parts = {"top": top, "bottom": bottom, "shoes": "", "bag": "", "hat": ""}
    if with_color:
        parts["shoes"] = f"{a['shoes_color']} shoes"
    if a["bag"] != "none":
        bag = _article(_join([color("bag_color"), a["bag"]]))
        parts["bag"] = str(rng.choice([f"carrying {bag}", f"with {bag}"]))
    if a["hat"] == "cap":
        parts["hat"] = "a cap"
    return parts


def caption(identity: Identity, modality: str, rng: np.random.Generator) -> str:
    """A varied one-sentence description of ``identity`` as seen in ``modality``.

    Visible captions may name colours; infrared captions ("an infrared photo of ...") never do.
    Some attributes are omitted at random, and the word order follows one of several templates.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    a = identity.attributes
    visible = modality == VISIBLE
    prefix = str(
        rng.choice(
            ["a photo of", "a picture of", "an image of"]
            if visible
            else ["an infrared photo of", "an infrared image of", "a thermal image of"]
        )
    )
    descriptors = [BODY_PHRASES[k][a[k]] if rng.random() < 0.7 else "" for k in ("height", "build")]
    subject = _article(_join([*descriptors, str(rng.choice(["person", "pedestrian"]))]))
    hair = f"{a['hair']} hair" if rng.random() < 0.8 else ""
    p = _caption_parts(a, visible, rng)
    if rng.random() < 0.25:
        p["shoes"] = ""
    wear = [p["top"], p["bottom"], p["shoes"], p["hat"]]
    wear = [w for w in wear if w]
    clothes = wear[0] if len(wear) == 1 else ", ".join(wear[:-1]) + " and " + wear[-1]
    template = int(rng.integers(3))
    if template == 0:
        text = _join([prefix, subject, f"with {hair}" if hair else "", "wearing", clothes])
        text += f", {p['bag']}" if p["bag"] else ""
    elif template == 1:
        text = _join([prefix, subject, "in", clothes])
        text += f", {p['bag']}" if p["bag"] else ""
        text += f", with {hair}" if hair else ""
    else:
        text = _join([prefix, subject, p["bag"]]) + f". The person wears {clothes}"
        text += f" and has {hair}" if hair else ""
    return text + "."
