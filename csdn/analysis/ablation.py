"""Ablations of CSDN's components: a grid of named variants x seeds on one dataset, as tidy tables.

Each variant is a named dict of dotted overrides (:func:`csdn.overrides.override`) of a base
:class:`~csdn.config.ExperimentConfig` (the full CSDN configuration of a profile): it sets the component
switches of :data:`SWITCHES` explicitly, and nothing else, so every row is a complete, documented
configuration. A row's name is the ``csdn --variant`` network it trains plus the switches it sets off
that network's defaults ("csdn sii=none" is ``csdn train --set model.sii=none``), so a name means one
network everywhere. The seed changes every stage's key, so seeds are independent runs. ::

    row                         reads as                     network            MSEL  SII        wording   pairing
    vision-only no-MSEL         vision-only                  vision-only        no    -          -         -
    vision-only-stems no-MSEL   + modality stems             vision-only-stems  no    -          -         -
    vision-only-stems           + MSEL (release w/o text)    vision-only-stems  yes   -          -         -
    vision-only                 shared stem + MSEL           vision-only        yes   -          -         -
    clip-reid                   CLIP-ReID (shared prompts)   clip-reid          yes   -          paper     private
    csdn sii=none               + modality prompts           csdn               yes   none       paper     private
    csdn                        + SII official = CSDN        csdn               yes   official   paper     private
    csdn no-MSEL                CSDN without MSEL            csdn               no    official   paper     private
    csdn sii=attention          + SII attention              csdn               yes   attention  paper     private
    csdn pairing=all            pairing all (released)       csdn               yes   official   paper     all
    csdn wording=released       released wording             csdn               yes   official   released  private

**Where is "+HSE"?** The paper adds MPL, SII and HSE in turn. Here (as in the released code) stage 3
starts from CLIP's image tower, not from anything stages 1-2 train, and HSE (the image-to-text
cross-entropy against the frozen text prototypes) is the *only* path from the text side to the image
network: modality prompts and SII without HSE train exactly the ``vision-only-stems`` network (stages 1-2
would run and be thrown away). So the text's total effect on the CSDN network is ``csdn`` against
``vision-only-stems``; MPL and SII are measured *with* HSE on, each against the row before it (see
:data:`COMPARISONS`). CLIP-ReID's image-to-text loss uses the same HSE term and weights against one
shared prompt learner on one shared stem, so its text effect is measured against ``vision-only``.
``clip-reid -> csdn sii=none`` changes two things (modality prompts and modality stems); the stems' own
effect, without text, is ``vision-only -> vision-only-stems``.

:func:`run_ablation` runs the grid through :func:`csdn.analysis.grid.run_grid` (parallel workers, a
resumable cache of measurements); :func:`summarize` and :func:`effects` turn its tables into mean ± sd
and paired effects with confidence intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from torch import Tensor

from csdn.analysis.grid import ZERO_SHOT, GridJob, GridResult, Measure, run_grid
from csdn.config import ExperimentConfig
from csdn.data.records import Record
from csdn.errors import ConfigError
from csdn.model.network import ModelConfig
from csdn.overrides import override
from csdn.plan import TrainingPlan, training_plan

# The dotted config keys every variant sets (the column of the variant table is the last part of the key).
SWITCHES = (
    "model.variant",  # the network (it decides the stems and whether text is used): "csdn", "clip-reid", ...
    "model.sii",  # the SII fusion (only the csdn variant fuses): "official", "attention", "mean", "none"
    "model.prompt_wording",  # "paper" or "released"
    "stage1.pairing",  # stage-1 image/text pairing: "private" or "all"
    "stage3.msel_weight",  # the MSEL term's weight (0: off; the profiles' value, 1, otherwise)
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


def _variant(name: str, what: str, network: str, sii: str = "none", msel: float = 1.0, **switches: str) -> Variant:
    overrides = {
        "model.variant": network,
        "model.sii": sii,
        "model.prompt_wording": switches.get("wording", "paper"),
        "stage1.pairing": switches.get("pairing", "private"),
        "stage3.msel_weight": msel,
    }
    return Variant(name, what, overrides)


VARIANTS: tuple[Variant, ...] = (
    _variant(
        "vision-only no-MSEL",
        "vision-only: CLIP image tower, one shared stem, ID + triplet losses only",
        "vision-only",
        msel=0.0,
    ),
    _variant(
        "vision-only-stems no-MSEL",
        "+ modality stems: a visible and an infrared stem, ID + triplet only",
        "vision-only-stems",
        msel=0.0,
    ),
    _variant(
        "vision-only-stems",
        "+ MSEL: the released objective without text (the CSDN network without HSE)",
        "vision-only-stems",
    ),
    _variant("vision-only", "shared stem, ID + triplet + MSEL (the baseline of `csdn demo`)", "vision-only"),
    _variant(
        "clip-reid",
        "CLIP-ReID: one shared prompt learner and stem, HSE against the shared prompts, MSEL",
        "clip-reid",
    ),
    _variant(
        "csdn sii=none",
        "+ modality prompts: two prompt learners + stems, each modality's images aligned to its own prompts",
        "csdn",
    ),
    _variant(
        "csdn",
        "+ SII official = CSDN as released: t_vis + W_c tanh(W_v t_ir), HSE to the fused prototypes, MSEL",
        "csdn",
        sii="official",
    ),
    _variant("csdn no-MSEL", "CSDN without MSEL", "csdn", sii="official", msel=0.0),
    _variant("csdn sii=attention", "CSDN with a genuine multi-head attention SII", "csdn", sii="attention"),
    _variant(
        "csdn pairing=all",
        "CSDN, stage 1 pairing every image with both learners' texts (released code)",
        "csdn",
        sii="official",
        pairing="all",
    ),
    _variant(
        "csdn wording=released",
        "CSDN with the released prompt 'A photo of a X X X X person.'",
        "csdn",
        sii="official",
        wording="released",
    ),
)
FULL_CSDN = "csdn"

# (effect, variant, reference): what each component adds, measured as variant - reference.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("modality stems (no text, no MSEL)", "vision-only-stems no-MSEL", "vision-only no-MSEL"),
    ("MSEL (no text, stems)", "vision-only-stems", "vision-only-stems no-MSEL"),
    ("modality stems (no text, MSEL)", "vision-only-stems", "vision-only"),
    ("text: prompts + SII + HSE (CSDN vs its network without text)", FULL_CSDN, "vision-only-stems"),
    ("CLIP-ReID text (shared stem)", "clip-reid", "vision-only"),
    ("modality prompts + stems (vs CLIP-ReID)", "csdn sii=none", "clip-reid"),
    ("SII official (vs no fusion)", FULL_CSDN, "csdn sii=none"),
    ("MSEL in CSDN", FULL_CSDN, "csdn no-MSEL"),
    ("SII attention (vs official)", "csdn sii=attention", FULL_CSDN),
    ("pairing all (vs private)", "csdn pairing=all", FULL_CSDN),
    ("released wording (vs paper)", "csdn wording=released", FULL_CSDN),
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


def grid_jobs(
    base: ExperimentConfig,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    zero_shot: bool = True,
) -> list[GridJob]:
    """The runs of an ablation: the frozen CLIP once (``zero_shot``; it has no seed) and every variant
    (names of :data:`VARIANTS`, default all) for every seed, seed by seed."""
    chosen = [get_variant(name) for name in variants] if variants is not None else list(VARIANTS)
    if not chosen or not seeds:
        raise ConfigError("an ablation needs at least one variant and one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {list(seeds)}")
    jobs = [GridJob(ZERO_SHOT, override(base, {"seed": seeds[0]}))] if zero_shot else []
    return jobs + [GridJob(v.name, v.apply(base, seed)) for seed in seeds for v in chosen]


# The grids notebooks 06 and 07 offer (their GRID parameter): the seeds and the rows of each.
GRIDS: dict[str, dict[str, Any]] = {
    # the three trained networks of notebook 07 (vision-only, CLIP-ReID, CSDN; the frozen CLIP comes free), one
    # seed: about a quarter of an hour on 2 CPU cores from a cold cache under the demo grid schedule
    "quick": {"seeds": (0,), "variants": ("vision-only", "clip-reid", FULL_CSDN)},
    # the README's grid: every row, seeds 0, 1, 2 (33 trained runs; csdn ablate --seeds 3)
    "full": {"seeds": (0, 1, 2), "variants": None},
}


def grid_preset(name: str) -> tuple[tuple[int, ...], tuple[str, ...] | None]:
    """(seeds, variant names or None for every row) of the grid called ``name`` in :data:`GRIDS`."""
    if name not in GRIDS:
        raise ConfigError(f"unknown grid {name!r}; choose one of {sorted(GRIDS)}")
    return GRIDS[name]["seeds"], GRIDS[name]["variants"]


def ablation_plan(
    base: ExperimentConfig, seeds: Sequence[int], variants: Sequence[str] | None, cache_root: Path
) -> TrainingPlan:
    """What training the ablation's runs (:func:`grid_jobs`) needs, what the cache holds, and about how long the
    rest takes (:func:`csdn.plan.training_plan`; the frozen CLIP needs no training)."""
    jobs = grid_jobs(base, seeds, variants, zero_shot=False)
    return training_plan({f"{job.name} (seed {job.seed})": job.config for job in jobs}, Path(cache_root))


def run_ablation(
    base: ExperimentConfig,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    zero_shot: bool = True,
    cache_root: Path | None = None,
    jobs: int = 1,
    threads: int | None = None,
    measure: Measure | None = None,
    progress: bool = True,
) -> GridResult:
    """Train (or load) and measure every run of :func:`grid_jobs` with :func:`csdn.analysis.grid.run_grid`
    (``jobs`` worker processes, ``threads`` torch threads each): ``metrics`` has one row per (variant, seed,
    protocol) with R1/R10/mAP/mINP in percent (means over the protocol's trials), ``runs`` one row per
    (variant, seed) with the run's seconds, training diagnostics and modality-gap metrics."""
    grid = grid_jobs(base, seeds, variants, zero_shot)
    if cache_root is None:
        raise ConfigError("run_ablation needs cache_root, the artifact cache the runs are trained in")
    return run_grid(grid, Path(cache_root), jobs, threads, measure, progress)


def summarize(
    runs: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP", "mINP"), by: Sequence[str] = ("variant", "protocol")
) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1; NaN for one seed) over seeds, per ``by`` group (variant
    and protocol for the metrics table, variant alone for the runs table), in the order the variants first
    appear; columns ``seeds``, ``<metric> mean``, ``<metric> std``."""
    _check_runs(runs, metrics, by)
    grouped = runs.groupby(list(by), sort=False)
    out = grouped.size().rename("seeds").to_frame()
    for metric in metrics:
        out[f"{metric} mean"] = grouped[metric].mean()
        out[f"{metric} std"] = grouped[metric].std(ddof=1)
    return out


def format_summary(
    summary: pd.DataFrame, metrics: Sequence[str] = ("R1", "mAP", "mINP"), digits: int = 1
) -> pd.DataFrame:
    """``summarize``'s table as ``"mean ± std"`` strings, one row per variant and one column per metric,
    per (protocol, metric) when the summary is by protocol too."""
    cells = pd.DataFrame(index=summary.index)
    for metric in metrics:
        mean, std = summary[f"{metric} mean"], summary[f"{metric} std"]
        cells[metric] = [
            f"{m:.{digits}f}" if np.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean, std)
        ]
    if "protocol" not in summary.index.names:
        return cells
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


def _check_runs(runs: pd.DataFrame, metrics: Sequence[str], by: Sequence[str] = ("variant", "protocol")) -> None:
    missing = {"seed", *by, *metrics} - set(runs.columns)
    if missing:
        raise ValueError(f"the ablation table lacks columns {sorted(missing)} (expected run_ablation's output)")
    if runs.duplicated([*by, "seed"]).any():
        raise ValueError(f"the ablation table has repeated ({', '.join(by)}, seed) rows")


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
