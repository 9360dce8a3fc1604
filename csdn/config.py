"""Configuration: frozen dataclasses and the named profiles that fill them.

Config enters at the edge (a notebook's parameters cell, the CLI) as a profile name plus overrides and
is passed down; library code never reads a global config. Each component owns its own config dataclass
(``SynthConfig`` in :mod:`csdn.synthvi.world`, ...); this module composes them into one
:class:`ExperimentConfig` per named profile.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from csdn.clip.adapt import GRID_INTERPOLATIONS
from csdn.clip.loader import TINY_ARCHS
from csdn.data.cache import RESIZE_FILTERS
from csdn.data.protocol import DIRECTIONS
from csdn.data.registry import DATASETS as REGISTERED_DATASETS
from csdn.data.sysu import GALLERY_CAMS
from csdn.data.transforms import INPUT_STATS
from csdn.errors import ConfigError, check_choice
from csdn.eval.features import FLIP_FUSIONS
from csdn.model.network import ModelConfig
from csdn.model.sii import make_sii
from csdn.overrides import override
from csdn.runtime import ComputeConfig
from csdn.synthvi.layouts import WRITERS
from csdn.synthvi.pretrain import PretrainConfig
from csdn.synthvi.world import SynthConfig
from csdn.train.reid_stage import ReIDStageConfig
from csdn.train.text_stages import TextStageConfig

SYNTHVI = "synthvi"  # the embedded world, generated into the cache
DATASETS = (SYNTHVI, *REGISTERED_DATASETS)  # DataConfig.dataset choices: SynthVI or a registered dataset
SYNTH_LAYOUTS = tuple(WRITERS)  # the registered datasets SynthVI can be written as
SYSU_MODES = tuple(GALLERY_CAMS)  # SYSU-MM01 search modes: "all", "indoor"
SELECTS = ("final", "best_val")  # how stage 3's result epoch is chosen
PROFILE_ENV = "CSDN_PROFILE"


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it is, and the image size the network sees."""

    dataset: str = SYNTHVI  # "synthvi" (generated) or a registered dataset ("sysu", "regdb", "llcm")
    root: str | None = None  # dataset folder for real data; None for synthvi (generated into the cache)
    synth: SynthConfig = field(default_factory=SynthConfig)  # the embedded world (dataset == "synthvi")
    synth_layout: str = "sysu"  # on-disk layout SynthVI is written in, read back by the real reader
    height: int = 128  # network input height (288 for RN50 on real data, 256 for ViT-B/16)
    width: int = 64  # network input width (144 / 128 on real data)
    hold_out_val: bool = True  # train without SYSU's val_id identities and use them for validation
    regdb_trial: int = 1  # RegDB trial (1..10): each trial is its own train/test split and model
    resize_filter: str = "bilinear"  # how files are resized into the image cache: "bilinear", or "lanczos"
    # (the release: PIL's LANCZOS, in its test loader and in AGW's SYSU-MM01 pre-processing script)

    KEY_LEGACY: ClassVar[dict[str, Any]] = {"resize_filter": "bilinear"}  # added later: off the keys at this value

    def __post_init__(self) -> None:
        check_choice("resize_filter", self.resize_filter, tuple(RESIZE_FILTERS))
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.synth_layout not in SYNTH_LAYOUTS:
            raise ConfigError(f"synth_layout must be one of {SYNTH_LAYOUTS}, got {self.synth_layout!r}")
        if self.synthetic and self.root:
            raise ConfigError(
                f"a data root ({self.root}) is for a real dataset, but the data is SynthVI (generated into the "
                "cache, no folder to read): choose a real-data profile (--profile sysu-rn50, regdb-rn50, "
                "llcm-vitb16, ...; in a notebook PROFILE = ...) or name the dataset (--set data.dataset=sysu; "
                "csdn stats also takes --dataset), or leave the root out (--data; in a notebook DATA_ROOT = None)"
            )
        if not self.synthetic and not self.root:
            raise ConfigError(
                f"dataset {self.dataset!r} needs a root folder: pass --data /path/to/{self.dataset} "
                f"(in a notebook: DATA_ROOT = '/path/to/{self.dataset}'; in code: data=DataConfig(root=...))"
            )
        if not 1 <= self.regdb_trial <= 10:
            raise ConfigError(f"regdb_trial must be in 1..10, got {self.regdb_trial}")

    @property
    def synthetic(self) -> bool:
        """Whether the data is SynthVI (generated) rather than a real dataset on disk."""
        return self.dataset == SYNTHVI

    @property
    def layout(self) -> str:
        """The registered reader to use: the real dataset's, or the one whose layout SynthVI was written in."""
        return self.synth_layout if self.synthetic else self.dataset


@dataclass(frozen=True)
class ClipConfig:
    """Which CLIP the image and text towers start from."""

    arch: str = "csdn-tiny-rn"  # open_clip architecture: "RN50", "ViT-B-16", "csdn-tiny-rn", "csdn-tiny-vit"
    # (with weights "tiny-synthvi": a tiny one, the pretraining's pretrain.arch)
    weights: str = "tiny-synthvi"  # "tiny-synthvi" (pretrain ours on SynthVI), a tag ("openai"), a weights
    # file, "local-dir:<folder>", or "random"
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # how "tiny-synthvi" is pretrained
    last_stride: int = 1  # ResNet layer4 stride (1: the re-ID adaptation)
    input_stats: str = "clip"  # image normalisation: "clip" (the weights' own, OpenAI's for OpenAI CLIP) or
    # "imagenet" (mean 0.485/0.456/0.406, std 0.229/0.224/0.225: every pipeline of the release)
    grid_interpolation: str = "bicubic"  # resizing a positional grid to the input: "bicubic" or "bilinear"
    # (the release and CLIP-ReID: bilinear)

    KEY_LEGACY: ClassVar[dict[str, Any]] = {"input_stats": "clip", "grid_interpolation": "bicubic"}

    def __post_init__(self) -> None:
        check_choice("input_stats", self.input_stats, INPUT_STATS)
        check_choice("grid_interpolation", self.grid_interpolation, GRID_INTERPOLATIONS)
        if self.last_stride not in (1, 2):
            raise ConfigError(f"last_stride must be 1 or 2, got {self.last_stride}")
        if self.weights == "tiny-synthvi":
            self._check_tiny_arch()

    def _check_tiny_arch(self) -> None:
        """ "tiny-synthvi" pretrains ``pretrain.arch`` (a tiny arch): ``arch`` must name that one."""
        if self.arch not in TINY_ARCHS:
            raise ConfigError(
                f"clip.weights='tiny-synthvi' pretrains a tiny CLIP ({', '.join(TINY_ARCHS)}) on SynthVI, not "
                f"{self.arch!r}: for {self.arch} choose weights it can load (--clip openai, a weights file, "
                "local-dir:<folder>, or random)"
            )
        if self.arch != self.pretrain.arch:
            raise ConfigError(
                f"clip.arch={self.arch!r} but the tiny-synthvi pretraining trains clip.pretrain.arch="
                f"{self.pretrain.arch!r}: set both (the CLI's --arch {self.arch} does)"
            )


@dataclass(frozen=True)
class EvalConfig:
    """How the test protocols are run."""

    trials: int = 10  # gallery trials averaged (SYSU, LLCM)
    flip: bool = True  # horizontal-flip test-time augmentation
    flip_fusion: str = "mean"  # with flip: "mean" (average the two features, L2-normalise) or "concat" (the
    # release: the plain and the flipped feature side by side, ranked by their raw dot product)
    rerank: bool = False  # k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)
    batch_size: int = 128  # feature-extraction batch size
    sysu_modes: tuple[str, ...] = ("all", "indoor")  # SYSU search modes
    sysu_shots: tuple[int, ...] = (1,)  # SYSU shots per (id, camera): 1 single-shot, 10 multi-shot
    directions: tuple[str, ...] = ("infrared->visible", "visible->infrared")  # RegDB / LLCM directions
    max_images: int = 0  # > 0: a dry run ranks at most this many queries and gallery images per split (csdn.dryrun)

    KEY_LEGACY: ClassVar[dict[str, Any]] = {"flip_fusion": "mean", "max_images": 0}

    def __post_init__(self) -> None:
        check_choice("flip_fusion", self.flip_fusion, FLIP_FUSIONS)
        if self.max_images < 0:
            raise ConfigError(f"max_images must be >= 0 (0: every test image), got {self.max_images}")
        if self.trials < 1 or self.batch_size < 1:
            raise ConfigError(f"need trials >= 1 and batch_size >= 1, got {self.trials} and {self.batch_size}")
        _check_choices("sysu_modes", self.sysu_modes, SYSU_MODES)
        _check_choices("directions", self.directions, DIRECTIONS)
        if any(shots < 1 for shots in self.sysu_shots):
            raise ConfigError(f"sysu_shots must be >= 1 (1 single-shot, 10 multi-shot), got {self.sysu_shots}")


def _check_choices(name: str, values: tuple[str, ...], choices: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise ConfigError(f"{name} may hold {', '.join(map(repr, choices))}; got {', '.join(map(repr, unknown))}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs, from data to evaluation."""

    name: str  # profile name (used in reports)
    seed: int = 0  # seed for every random choice of the run
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    data: DataConfig = field(default_factory=DataConfig)  # dataset and image size
    clip: ClipConfig = field(default_factory=ClipConfig)  # the CLIP backbone
    model: ModelConfig = field(default_factory=ModelConfig)  # variant, prompts, SII, heads
    stage1: TextStageConfig = field(default_factory=TextStageConfig)  # prompt learning
    stage2: TextStageConfig = field(default_factory=TextStageConfig)  # SII training
    stage3: ReIDStageConfig = field(default_factory=ReIDStageConfig)  # HSE + re-ID training
    eval: EvalConfig = field(default_factory=EvalConfig)  # test protocols
    compute: ComputeConfig = field(default_factory=ComputeConfig)  # precision and memory layout (csdn.runtime)
    select: str = "final"  # "final" (last epoch of the fixed schedule) or "best_val" (validation mAP)
    validate_every: int = 0  # validate stage 3 every this many epochs on the held-out val ids (0: never)
    sync_bn: bool = True  # several processes (torchrun): BatchNorm statistics over the global batch, not per rank
    skip_bad_images: bool = False  # leave unreadable training images out (listed in skipped.json) instead of stopping

    def __post_init__(self) -> None:
        self._check_epochs()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in 0..{2**32 - 1} (NumPy's range), got {self.seed!r}")
        if self.select not in SELECTS:
            raise ConfigError(f"select must be one of {SELECTS}, got {self.select!r}")
        if self.validate_every < 0:
            raise ConfigError(f"validate_every must be >= 0 (0: never), got {self.validate_every}")
        if self.select == "best_val" and self.validate_every == 0:
            raise ConfigError(
                "select='best_val' needs validation: set validate_every > 0 (e.g. --set validate_every=5)"
                ", or select='final'"
            )

    def _check_epochs(self) -> None:
        """Every stage that trains needs an epoch (an untrained stage would be cached as done)."""
        trains = {"stage3": True, "stage1": self.model.uses_text, "stage2": self.model.uses_text and self.trains_sii}
        for stage, training in trains.items():
            epochs = getattr(self, stage).epochs
            if training and epochs < 1:
                raise ConfigError(f"{stage}.epochs must be >= 1 for variant {self.model.variant!r}, got {epochs}")

    @property
    def trains_sii(self) -> bool:
        """Whether stage 2 trains: the SII this variant uses has trainable parameters ("mean" and "none" do not)."""
        return any(p.requires_grad for p in make_sii(self.model.sii_kind, 4, heads=1).parameters())


SMOKE_SYNTH = SynthConfig(
    height=64,
    width=32,
    clip_ids=24,
    train_ids=12,  # training + validation: the SYSU-MM01 layout holds val_ids=4 out, so 8 train and 4 validate
    val_ids=4,
    test_ids=8,
    images_per_cam=2,
    llcm_cams_per_id=2,
    clip_images_per_id=4,
    regdb_images=4,
    regdb_trials=2,
)

# The embedded default departs from the release where measurements on it said so (README, "Fidelity";
# single demo runs, seed 0, test all-search R1 / mAP after 30 stage-3 epochs):
# - text side on cosine similarities at the tiny CLIP's own temperature (its logit scale is 12.6, so
#   1 / 12.6 = 0.08): with raw features (norm ~20) at temperature 1 the logits are ~10x sharper than CLIP's;
#   stage 1 then reaches a visible image-to-own-prompt top-1 of 0.32 instead of 0.76 (30 epochs at 3e-3),
#   and raw-logit HSE is lowered by shrinking the projected feature instead of aligning it;
# - MSEL on L2-normalised features: on raw features it is ~20 at the start (GeM norm ~13), dwarfs the ID
#   loss and stalls fitting (ID accuracy 0.26 instead of 0.57 after 14 epochs); normalised: 24.2 / 30.3
#   against 22.3 / 27.9 without MSEL;
# - Adam at 8e-3 for a 0.37 M-parameter tower (1e-3: 24.2 / 30.3, 2e-3: 28.1 / 33.5, 4e-3: 31.6 / 37.4,
#   8e-3: 38.5 / 41.9, 1.6e-2: 36.6 / 41.0; the release's 3e-4 fits 49% of the training identities in 14
#   epochs, 1e-3 78%), for 36 epochs (39.9 / 43.1; 30 epochs: 38.5 / 41.9);
# - a 4-pixel pad at 128x64 (10 pixels is a 15.6% shift at width 64) and no random erasing.
# It also keeps the switches that predate the release-fidelity ones (README, "Fidelity", embedded default):
# the stage-1/2 cosine counted from the end of the warm-up, every image once in the feature bank with P x K
# batches, the exact WRT softmax and the BNNeck parameter groups; its preprocessing is the
# ClipConfig/DataConfig/EvalConfig defaults (CLIP's statistics, bilinear resizing, flip features averaged).
DEMO_TEXT_STAGE = dict(cosine=True, temperature=0.08, schedule="after_warmup", feature_bank="images")
DEMO_STAGE3 = dict(
    lr=8e-3,
    pad=4,
    erasing_p=0.0,
    msel_normalize=True,
    hse_cosine=True,
    hse_temperature=0.08,
    wrt_weights="exact",
    param_groups="bnneck",
)
# What the release does to images, on every real-data profile (each a switch: README, "Fidelity").
RELEASE_PREPROCESSING = {
    "clip.input_stats": "imagenet",
    "clip.grid_interpolation": "bilinear",
    "data.resize_filter": "lanczos",
    "eval.flip_fusion": "concat",
}
# The release computes in float32 (no autocast anywhere): so do the real-data profiles unless told
# otherwise (compute.precision=auto: bf16 on a GPU with it; README, "Fidelity").
RELEASE_COMPUTE = {"compute.precision": "fp32"}


def _smoke(root: str | None = None) -> ExperimentConfig:
    size = (64, 32)
    quick = TextStageConfig(epochs=2, warmup_epochs=1, ids_per_batch=4, instances=2, **DEMO_TEXT_STAGE)
    return ExperimentConfig(
        name="smoke",
        data=DataConfig(synth=SMOKE_SYNTH, height=size[0], width=size[1]),
        clip=ClipConfig(pretrain=PretrainConfig(image_size=size, epochs=2, batch_size=32)),
        stage1=quick,
        stage2=quick,
        stage3=ReIDStageConfig(epochs=2, warmup_epochs=1, milestones=(1,), ids_per_batch=4, instances=2, **DEMO_STAGE3),
        eval=EvalConfig(trials=2),
        validate_every=1,
    )


def _demo(root: str | None = None) -> ExperimentConfig:
    return ExperimentConfig(
        name="demo",
        data=DataConfig(synth=SynthConfig(), height=128, width=64),
        clip=ClipConfig(pretrain=PretrainConfig(image_size=(128, 64))),
        # Schedules sized so a cold demo fits in 15 minutes on 2 CPU cores. Stage 1 is cheap (about 1 s an
        # epoch: K=8 means one prompt per identity and batch) and needs its 30 epochs at 3e-3 to fit.
        stage1=TextStageConfig(epochs=30, lr=3e-3, warmup_epochs=2, instances=8, **DEMO_TEXT_STAGE),
        stage2=TextStageConfig(epochs=5, warmup_epochs=1, instances=8, **DEMO_TEXT_STAGE),
        stage3=ReIDStageConfig(epochs=48, warmup_epochs=3, milestones=(32, 42), **DEMO_STAGE3),
        eval=EvalConfig(trials=10),
        validate_every=6,
    )


def _real(dataset: str, arch: str) -> Callable[[str | None], ExperimentConfig]:
    """Released CSDN hyper-parameters on a real dataset: RN50 at 288x144, or ViT-B/16 at 256x128."""
    size = (288, 144) if arch == "RN50" else (256, 128)
    # The released code trains RN50 with Adam at 3e-4; a ViT-B/16 needs the much lower rate CLIP-ReID uses.
    stage3 = ReIDStageConfig() if arch == "RN50" else ReIDStageConfig(lr=5e-6)
    sysu_shots = (1, 10)  # SYSU-MM01 reports single- and multi-shot; the other readers have no shots

    def build(root: str | None = None) -> ExperimentConfig:
        if not root:
            raise ConfigError(
                f"the {dataset}-{_ARCH_NAMES[arch]} profile needs the dataset folder: --data /path/to/{dataset} "
                f"(in a notebook: DATA_ROOT = '/path/to/{dataset}' in the parameters cell)"
            )
        cfg = ExperimentConfig(
            name=f"{dataset}-{_ARCH_NAMES[arch]}",
            data=DataConfig(dataset=dataset, root=root, height=size[0], width=size[1], hold_out_val=False),
            clip=ClipConfig(arch=arch, weights="openai"),
            stage3=stage3,
            eval=EvalConfig(sysu_shots=sysu_shots),
        )
        return override(cfg, {**RELEASE_PREPROCESSING, **RELEASE_COMPUTE})

    return build


_ARCH_NAMES = {"RN50": "rn50", "ViT-B-16": "vitb16"}
PROFILES: dict[str, Callable[[str | None], ExperimentConfig]] = {
    "smoke": _smoke,
    "demo": _demo,
    **{f"{d}-{_ARCH_NAMES[a]}": _real(d, a) for d in REGISTERED_DATASETS for a in ("RN50", "ViT-B-16")},
}


def get_profile(name: str, data_root: str | None = None, **overrides: Any) -> ExperimentConfig:
    """The named profile (real-data ones need ``data_root``, which SynthVI refuses) with ``overrides`` (see
    :func:`csdn.overrides.override` for dotted ones: ``override(get_profile("demo"), {"stage3.epochs": 10})``)."""
    return profile_config(name, data_root, overrides)


def profile_config(name: str, data_root: str | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """:func:`get_profile` with the overrides as one mapping (dotted keys, any field name: ``{"name": ...}``);
    the data root and the overrides apply together (``data.dataset`` may name the dataset the root holds)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    changes = {"data.root": data_root, **overrides} if data_root else overrides  # refused for SynthVI
    return override(PROFILES[name](data_root), changes)


def profile_from_env(default: str = "demo") -> str:
    """The profile name from ``$CSDN_PROFILE`` (for notebooks' parameters cells and the CLI only)."""
    return os.environ.get(PROFILE_ENV, default)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)
