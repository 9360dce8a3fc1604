"""Ablations of CSDN's components: a grid of named variants x seeds on one dataset, as tidy tables.

Each variant is a named dict of dotted overrides (:func:`csdn.overrides.override`) of a base
:class:`~csdn.config.ExperimentConfig` (the full CSDN configuration of a profile): it sets the component
switches of :data:`SWITCHES` explicitly, and nothing else, so every row below is a complete, documented
configuration. Runs go through :class:`~csdn.experiment.Experiment`,
whose stage caches are keyed by configuration: stage 1 is shared by every variant with the same
prompts (``+modality prompts`` and both ``+SII`` rows), the ``+SII (official)`` row *is* the profile's
default run (a notebook or ``csdn train`` of the same seed is reused), and a second ablation reuses
everything. The seed changes every stage's key, so seeds are independent runs. ::

    variant                model              stems  SII        wording   pairing  text reaches the images by
    vision-only            vision-only        no     -          -         -        nothing (ID + triplet only)
    +stems (CSDN w/o HSE)  vision-only-stems  yes    -          -         -        nothing
    clip-reid              clip-reid          no     -          paper     private  i2t loss to shared prompts
    +modality prompts      csdn               yes    none       paper     private  HSE, own modality's prompts
    +SII (official)        csdn               yes    official   paper     private  HSE, fused prompts (= CSDN)
    +SII (attention)       csdn               yes    attention  paper     private  HSE, fused prompts
    pairing all            csdn               yes    official   paper     all      HSE, fused prompts
    wording released       csdn               yes    official   released  private  HSE, fused prompts

**Where is "+HSE"?** The paper adds MPL, SII and HSE in turn. Here (as in the released code) stage 3
starts from CLIP's image tower, not from anything stages 1-2 train, and HSE (the image-to-text
cross-entropy against the frozen text prototypes) is the *only* path from the text side to the image
network. A row "modality prompts + SII, without HSE" therefore trains exactly the network of
``+stems (CSDN w/o HSE)``: stages 1-2 would run and be thrown away (same seed, same initialisation,
same batches). So that row is the ``vision-only-stems`` variant, and HSE's effect
is measured as ``+SII (official)`` (full CSDN) against ``+stems (CSDN w/o HSE)``; MPL and SII are
measured *with* HSE on, each against the row before it (see :data:`COMPARISONS`). CLIP-ReID's
image-to-text loss uses the same HSE term and weights, against one shared prompt learner.
``clip-reid -> +modality prompts`` changes two things (modality prompts and modality stems); the stems'
own effect, without text, is ``vision-only -> +stems``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from torch import Tensor
from tqdm.auto import tqdm

from csdn.config import ExperimentConfig
from csdn.data.records import Record
from csdn.errors import ConfigError
from csdn.eval.protocols import ProtocolResult
from csdn.model.network import ModelConfig
from csdn.overrides import override

ZERO_SHOT = "zero-shot CLIP"  # the reference row: the frozen CLIP image tower, no training
Evaluate = Callable[[ExperimentConfig, bool], Mapping[str, ProtocolResult]]  # (cfg, zero_shot) -> results


# The dotted config keys every variant sets (the column of the variant table is the last part of the key).
SWITCHES = (
    "model.variant",  # the network (it decides the stems and whether text is used): "csdn", "clip-reid", ...
    "model.sii",  # the SII fusion (only the csdn variant fuses): "official", "attention", "mean", "none"
    "model.prompt_wording",  # "paper" or "released"
    "stage1.pairing",  # stage-1 image/text pairing: "private" or "all"
)


@dataclass(frozen=True)
class Variant:
    """One ablation row: the dotted overrides (one per key of :data:`SWITCHES`) it applies to the base config."""

    name: str  # row name in tables and figures
    what: str  # one-line description
    overrides: Mapping[str, Any]  # SWITCHES key -> value, applied with csdn.overrides.override

    def __post_init__(self) -> None:
        if tuple(self.overrides) != SWITCHES:
            raise ConfigError(
                f"variant {self.name!r} must set exactly {SWITCHES} in that order, got {tuple(self.overrides)}"
            )

    @property
    def switches(self) -> dict[str, Any]:
        """The overrides by short name (variant, sii, prompt_wording, pairing), for tables."""
        return {key.rpartition(".")[2]: value for key, value in self.overrides.items()}

    @property
    def uses_text(self) -> bool:
        return ModelConfig(variant=self.overrides["model.variant"]).uses_text

    def apply(self, base: ExperimentConfig, seed: int | None = None) -> ExperimentConfig:
        """``base`` with this variant's overrides (and ``seed`` when given); everything else is kept."""
        if self.uses_text and base.stage3.hse_visible <= 0 and base.stage3.hse_infrared <= 0:
            raise ConfigError(
                f"variant {self.name!r} uses text, but the base config disables HSE "
                "(stage3.hse_visible = hse_infrared = 0), the only path from text to images"
            )
        return override(base, {**self.overrides, **({} if seed is None else {"seed": seed})})


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "vision-only",
        "CLIP image tower trained with ID + triplet losses, one shared stem, no text",
        {
            "model.variant": "vision-only",
            "model.sii": "none",
            "model.prompt_wording": "paper",
            "stage1.pairing": "private",
        },
    ),
    Variant(
        "+stems (CSDN w/o HSE)",
        "vision-only with modality-specific stems: the CSDN network without HSE "
        "(prompts and SII without HSE never reach it)",
        {
            "model.variant": "vision-only-stems",
            "model.sii": "none",
            "model.prompt_wording": "paper",
            "stage1.pairing": "private",
        },
    ),
    Variant(
        "clip-reid",
        "CLIP-ReID: one shared prompt learner, image-to-text loss (HSE weights) against it, one shared stem",
        {
            "model.variant": "clip-reid",
            "model.sii": "none",
            "model.prompt_wording": "paper",
            "stage1.pairing": "private",
        },
    ),
    Variant(
        "+modality prompts",
        "two modality prompt learners + stems; each modality's images aligned to its own prompts (no fusion)",
        {"model.variant": "csdn", "model.sii": "none", "model.prompt_wording": "paper", "stage1.pairing": "private"},
    ),
    Variant(
        "+SII (official)",
        "full CSDN: released SII fusion t_vis + W_c tanh(W_v t_ir), HSE to the fused prototypes",
        {
            "model.variant": "csdn",
            "model.sii": "official",
            "model.prompt_wording": "paper",
            "stage1.pairing": "private",
        },
    ),
    Variant(
        "+SII (attention)",
        "full CSDN with a genuine multi-head attention SII",
        {
            "model.variant": "csdn",
            "model.sii": "attention",
            "model.prompt_wording": "paper",
            "stage1.pairing": "private",
        },
    ),
    Variant(
        "pairing all",
        "full CSDN, stage 1 with every image against both learners' texts (released code)",
        {"model.variant": "csdn", "model.sii": "official", "model.prompt_wording": "paper", "stage1.pairing": "all"},
    ),
    Variant(
        "wording released",
        "full CSDN with the released prompt 'A photo of a X X X X person.'",
        {
            "model.variant": "csdn",
            "model.sii": "official",
            "model.prompt_wording": "released",
            "stage1.pairing": "private",
        },
    ),
)
FULL_CSDN = "+SII (official)"

# (effect, variant, reference): what each component adds, measured as variant - reference.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("modality stems (no text)", "+stems (CSDN w/o HSE)", "vision-only"),
    ("HSE (text into the CSDN network)", FULL_CSDN, "+stems (CSDN w/o HSE)"),
    ("CLIP-ReID text (shared prompts)", "clip-reid", "vision-only"),
    ("modality prompts + stems (vs CLIP-ReID)", "+modality prompts", "clip-reid"),
    ("SII official (vs no fusion)", FULL_CSDN, "+modality prompts"),
    ("SII attention (vs official)", "+SII (attention)", FULL_CSDN),
    ("pairing all (vs private)", "pairing all", FULL_CSDN),
    ("released wording (vs paper)", "wording released", FULL_CSDN),
    ("CSDN vs CLIP-ReID", FULL_CSDN, "clip-reid"),
)


def get_variant(name: str) -> Variant:
    """The variant called ``name``."""
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise ConfigError(f"unknown ablation variant {name!r}; choose from {[v.name for v in VARIANTS]}")


def variants_frame(variants: Sequence[Variant] = VARIANTS) -> pd.DataFrame:
    """The variant table: name, switches and description ("-" where a switch has no effect)."""
    rows = []
    for v in variants:
        row = {"name": v.name, "what": v.what, **v.switches}
        if not v.uses_text:
            row.update(sii="-", prompt_wording="-", pairing="-")
        elif row["variant"] != "csdn":
            row["sii"] = "-"
        rows.append(row)
    return pd.DataFrame(rows).set_index("name")


def experiment_evaluator(cache_root: Path, progress: bool = False) -> Evaluate:
    """``(cfg, zero_shot) -> {protocol: ProtocolResult}`` by a cached :class:`~csdn.experiment.Experiment`:
    the trained network, or with ``zero_shot`` the frozen CLIP image tower it starts from.

    Refuses (RuntimeError) to evaluate two different configurations that map to one stage-3 cache entry,
    since the second would silently reuse the first one's network (see :func:`check_distinct_run`).
    """
    from csdn.experiment import Experiment

    seen: dict[str, ExperimentConfig] = {}

    def evaluate(cfg: ExperimentConfig, zero_shot: bool) -> Mapping[str, ProtocolResult]:
        experiment = Experiment(cfg, cache_root, progress=progress)
        if not zero_shot:
            check_distinct_run(seen, experiment.stage3_key, cfg)
        return experiment.evaluate(experiment.zero_shot_features() if zero_shot else None)

    return evaluate


def check_distinct_run(seen: dict[str, ExperimentConfig], stage3_key: str, cfg: ExperimentConfig) -> None:
    """Record ``cfg`` under its stage-3 cache key in ``seen``; raise if another configuration has that key."""
    other = seen.setdefault(stage3_key, cfg)
    if other != cfg:
        raise RuntimeError(
            f"two different configurations (seeds {other.seed} and {cfg.seed}, model variant "
            f"{cfg.model.variant!r}) share the stage-3 cache entry {stage3_key}: the second run would reuse "
            "the first one's network. Experiment.stage3_key must depend on the data, the CLIP and the seed "
            "for every variant (in csdn/experiment.py the vision-only key is the constant 'no-text' "
            "without them)."
        )


def model_features(
    base: ExperimentConfig,
    name: str,
    records: Sequence[Record],
    cache_root: Path,
    seed: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Test features ``(len(records), D)`` of the variant called ``name`` (trained or loaded from the
    cache), or of the frozen CLIP for :data:`ZERO_SHOT`."""
    from csdn.experiment import Experiment

    seed_change = {} if seed is None else {"seed": seed}
    cfg = override(base, seed_change) if name == ZERO_SHOT else get_variant(name).apply(base, seed)
    experiment = Experiment(cfg, cache_root, progress)
    features_of = experiment.zero_shot_features() if name == ZERO_SHOT else experiment.network_features()
    return features_of(list(records))


def run_ablation(
    base: ExperimentConfig,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    zero_shot: bool = True,
    evaluate: Evaluate | None = None,
    cache_root: Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train (or load) and evaluate every variant for every seed: a tidy table, one row per
    (variant, seed, protocol) with R1/R10/mAP/mINP in percent (means over the protocol's trials) and the
    run's seconds. ``variants`` are names of :data:`VARIANTS` (default all); ``zero_shot`` adds the
    frozen CLIP once (it has no seed). ``evaluate`` defaults to :func:`experiment_evaluator` on
    ``cache_root``.
    """
    chosen = [get_variant(name) for name in variants] if variants is not None else list(VARIANTS)
    if not chosen or not seeds:
        raise ConfigError("an ablation needs at least one variant and one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
    if evaluate is None:
        if cache_root is None:
            raise ValueError("run_ablation needs cache_root (or an evaluate function)")
        evaluate = experiment_evaluator(cache_root)
    jobs = [(ZERO_SHOT, seeds[0], override(base, {"seed": seeds[0]}))] if zero_shot else []
    jobs += [(v.name, seed, v.apply(base, seed)) for seed in seeds for v in chosen]
    rows = []
    for name, seed, cfg in tqdm(jobs, desc="ablation runs", disable=not progress):
        t0 = time.perf_counter()
        results = evaluate(cfg, name == ZERO_SHOT)
        seconds = time.perf_counter() - t0
        rows += [
            {"variant": name, "seed": seed, "protocol": protocol, **_metrics(result), "seconds": seconds}
            for protocol, result in results.items()
        ]
    return pd.DataFrame(rows)


def _metrics(result: ProtocolResult) -> dict[str, float]:
    return {
        "R1": 100 * result.rank(1),
        "R10": 100 * result.rank(10),
        "mAP": 100 * result.mAP,
        "mINP": 100 * result.mINP,
    }


def summarize(runs: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP", "mINP")) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; NaN for one seed) over seeds, per variant and
    protocol, in the order the variants first appear; columns ``seeds``, ``<metric> mean``, ``<metric> std``."""
    _check_runs(runs, metrics)
    grouped = runs.groupby(["variant", "protocol"], sort=False)
    out = grouped.size().rename("seeds").to_frame()
    for metric in metrics:
        out[f"{metric} mean"] = grouped[metric].mean()
        out[f"{metric} std"] = grouped[metric].std(ddof=1)
    return out


def format_summary(
    summary: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP", "mINP"), digits: int = 1
) -> pd.DataFrame:
    """``summarize``'s table as ``"mean ± std"`` strings, one row per variant, one column per (protocol, metric)."""
    cells = pd.DataFrame(index=summary.index)
    for metric in metrics:
        mean, std = summary[f"{metric} mean"], summary[f"{metric} std"]
        cells[metric] = [
            f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean, std)
        ]
    table = cells.unstack("protocol")
    table = table.reindex(list(dict.fromkeys(summary.index.get_level_values("variant"))))
    table.columns = [f"{protocol} {metric}" for metric, protocol in table.columns]
    protocols = list(dict.fromkeys(summary.index.get_level_values("protocol")))
    return table[[f"{p} {m}" for p in protocols for m in metrics]]


def effects(
    runs: pd.DataFrame,
    metric: str = "mAP",
    comparisons: Sequence[tuple[str, str, str]] = COMPARISONS,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Each comparison's effect on ``metric`` per protocol, paired by seed.

    ``delta`` is the mean over seeds of (variant - reference), ``sd`` the standard deviation of those
    paired differences, ``ci`` the half-width of the Student-t ``confidence`` interval of the mean
    difference. ``verdict`` is "helps"/"hurts" when the interval excludes 0, "within noise" when it
    does not, and "one seed" when there is nothing to estimate the noise from. Comparisons whose two
    variants are not both in ``runs`` are skipped.
    """
    _check_runs(runs, [metric])
    table = runs.pivot_table(index=["protocol", "seed"], columns="variant", values=metric)
    rows = []
    for effect, variant, reference in comparisons:
        if variant not in table or reference not in table:
            continue
        for protocol in dict.fromkeys(runs["protocol"]):
            diff = (table.loc[protocol, variant] - table.loc[protocol, reference]).dropna().to_numpy()
            if len(diff) == 0:
                continue
            n, delta = len(diff), float(diff.mean())
            sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
            ci = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
            if n < 2:
                verdict = "one seed"
            else:
                verdict = "within noise" if abs(delta) <= ci else "helps" if delta > 0 else "hurts"
            rows.append(
                {
                    "effect": effect,
                    "variant": variant,
                    "reference": reference,
                    "protocol": protocol,
                    "seeds": n,
                    f"{metric} delta": delta,
                    "sd": sd,
                    "ci": ci,
                    "verdict": verdict,
                }
            )
    return pd.DataFrame(rows)


def describe_effects(table: pd.DataFrame, protocol: str | None = None) -> str:
    """One plain sentence from :func:`effects`' table for ``protocol`` (default: the first): which
    effects lie beyond the seed noise (with their size and interval) and which do not."""
    if table.empty:
        return "No comparison has both of its variants in the runs."
    protocol = protocol or table["protocol"].iloc[0]
    rows = table[table["protocol"] == protocol]
    if rows.empty:
        choices = list(dict.fromkeys(table["protocol"]))
        raise ValueError(f"protocol {protocol!r} is not in the effects table; choose one of {choices}")
    metric = next(c for c in rows.columns if c.endswith(" delta")).removesuffix(" delta")
    n = int(rows["seeds"].min())
    if n < 2:
        return f"{protocol}, {metric}: one seed only, so no effect can be told from seed noise."

    def item(r) -> str:
        return f"{r['effect']} {r[f'{metric} delta']:+.1f} (±{r['ci']:.1f})"

    clear = [item(r) for _, r in rows.iterrows() if r["verdict"] in ("helps", "hurts")]
    noise = [item(r) for _, r in rows.iterrows() if r["verdict"] == "within noise"]
    parts = [f"{protocol}, {metric} points, {n} paired seeds, 95% interval in brackets:"]
    parts.append(f"beyond the seed noise: {'; '.join(clear)}." if clear else "no effect is beyond the seed noise.")
    if noise:
        parts.append(f"Within the noise: {'; '.join(noise)}.")
    return " ".join(parts)


def _check_runs(runs: pd.DataFrame, metrics: Sequence[str]) -> None:
    missing = {"variant", "seed", "protocol", *metrics} - set(runs.columns)
    if missing:
        raise ValueError(f"the ablation table lacks columns {sorted(missing)} (expected run_ablation's output)")
    if runs.duplicated(["variant", "seed", "protocol"]).any():
        raise ValueError("the ablation table has repeated (variant, seed, protocol) rows")


GAP_MODELS: dict[str, str] = {  # label -> variant name: the models whose modality gap is compared
    "zero-shot CLIP": ZERO_SHOT,
    "vision-only": "vision-only",
    "CLIP-ReID": "clip-reid",
    "CSDN": FULL_CSDN,
}


def collect_features(
    base: ExperimentConfig,
    records: Sequence[Record],
    cache_root: Path,
    models: Mapping[str, str] = GAP_MODELS,
    seed: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """``{label: features of records}`` for each ``label -> variant name`` of ``models``."""
    return {label: model_features(base, name, records, cache_root, seed, progress) for label, name in models.items()}
