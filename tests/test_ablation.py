"""Ablation variants as config transformations, the tidy run table, mean ± sd, paired effects, ``csdn ablate``."""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import csdn.cli.studies as commands
from csdn.analysis.ablation import (
    COMPARISONS,
    FULL_CSDN,
    GAP_MODELS,
    VARIANTS,
    ZERO_SHOT,
    ablation_plan,
    describe_effects,
    effects,
    format_summary,
    get_variant,
    grid_preset,
    run_ablation,
    summarize,
    variants_frame,
)
from csdn.config import get_profile
from csdn.errors import CsdnError
from csdn.overrides import override

BASE = get_profile("smoke")


def test_full_csdn_row_is_the_profile_itself():
    # the csdn row shares every stage cache with notebooks and `csdn train` of the same seed
    assert get_variant(FULL_CSDN).apply(BASE) == BASE
    assert get_variant(FULL_CSDN).apply(BASE, seed=4) == dataclasses.replace(BASE, seed=4)


def test_each_variant_sets_its_switches():
    m = {v.name: v.apply(BASE, 1) for v in VARIANTS}
    assert all(cfg.seed == 1 for cfg in m.values())
    plain = m["vision-only no-MSEL"]
    assert not plain.model.uses_text and not plain.model.modality_stems and plain.stage3.msel_weight == 0
    stems = m["vision-only-stems no-MSEL"]
    assert not stems.model.uses_text and stems.model.modality_stems and stems.stage3.msel_weight == 0
    assert m["vision-only-stems"].model.modality_stems and m["vision-only-stems"].stage3.msel_weight == 1
    assert not m["vision-only"].model.modality_stems and m["vision-only"].stage3.msel_weight == 1
    clip_reid = m["clip-reid"].model
    assert clip_reid.shared_prompts and clip_reid.sii_kind == "none" and not clip_reid.modality_stems
    prompts = m["csdn sii=none"].model
    assert not prompts.shared_prompts and prompts.sii_kind == "none" and prompts.modality_stems
    assert m["csdn no-MSEL"].stage3.msel_weight == 0 and m["csdn no-MSEL"].model == BASE.model
    assert m["csdn sii=attention"].model.sii_kind == "attention"
    assert m["csdn pairing=all"].stage1.pairing == "all" and m["csdn pairing=all"].model == BASE.model
    assert m["csdn wording=released"].model.prompt_wording == "released"
    assert len({repr(cfg) for cfg in m.values()}) == len(VARIANTS)  # no two rows train the same thing
    # the variant switches never touch data, CLIP, stage-2 or evaluation, and of stage 3 only MSEL's weight
    for cfg in m.values():
        assert (cfg.data, cfg.clip, cfg.stage2, cfg.eval) == (BASE.data, BASE.clip, BASE.stage2, BASE.eval)
        assert dataclasses.replace(cfg.stage3, msel_weight=BASE.stage3.msel_weight) == BASE.stage3


def test_row_names_are_cli_networks():
    # a row called after a `--variant` network with no switch off its defaults trains exactly that network
    # (the baselines' rows set model.sii to "none", which those networks ignore: only csdn fuses)
    assert get_variant("csdn").apply(BASE) == override(BASE, {"model.variant": "csdn"})
    for name in ("vision-only", "vision-only-stems", "clip-reid"):
        row, cli = get_variant(name).apply(BASE), override(BASE, {"model.variant": name})
        assert row.model.sii_kind == cli.model.sii_kind == "none"
        assert row == override(cli, {"model.sii": "none"})


def test_text_variants_refuse_a_base_without_hse():
    no_hse = dataclasses.replace(BASE, stage3=dataclasses.replace(BASE.stage3, hse_visible=0.0, hse_infrared=0.0))
    with pytest.raises(ValueError, match="disables HSE"):
        get_variant("clip-reid").apply(no_hse)
    assert not get_variant("vision-only").apply(no_hse).model.uses_text


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown ablation variant 'CSDN'"):
        get_variant("CSDN")
    with pytest.raises(ValueError, match="unknown ablation variant"):
        run_ablation(BASE, variants=["nope"], measure=fake_measure)


def test_comparisons_name_existing_variants():
    names = {v.name for v in VARIANTS}
    assert all(a in names and b in names for _, a, b in COMPARISONS)
    frame = variants_frame()
    assert list(frame.index) == [v.name for v in VARIANTS]
    assert tuple(frame.loc["vision-only", ["sii", "prompt_wording", "pairing"]]) == ("-", "-", "-")
    assert frame.loc["clip-reid", "sii"] == "-" and frame.loc[FULL_CSDN, "sii"] == "official"
    assert frame.loc["csdn no-MSEL", "msel_weight"] == 0


def fake_measure(job, cache_root):
    """measure_run's record with made-up numbers: zero-shot 10%, +10 for stems, +1 per seed."""
    cfg = job.config
    value = 10.0 if job.zero_shot else 20.0 + 10.0 * cfg.model.modality_stems + cfg.seed
    metrics = {"R1": value, "R10": 100.0, "mAP": value / 2, "mINP": value / 4}
    run = {"margin": value / 100, "seconds": 1.0, **({} if job.zero_shot else {"train ID acc": 0.9})}
    return {
        "name": job.name,
        "seed": job.seed,
        "stage3_key": None if job.zero_shot else repr(cfg),
        "results": {"all": metrics, "indoor": metrics},
        "run": run,
    }


def test_run_ablation_tidy_tables(tmp_path: Path):
    result = run_ablation(
        BASE,
        seeds=(3, 5),
        variants=["vision-only", FULL_CSDN],
        cache_root=tmp_path,
        measure=fake_measure,
        progress=False,
    )
    jobs = list(zip(result.runs.variant, result.runs.seed))
    assert jobs == [(ZERO_SHOT, 3), ("vision-only", 3), (FULL_CSDN, 3), ("vision-only", 5), (FULL_CSDN, 5)]
    assert list(result.metrics.columns) == ["variant", "seed", "protocol", "R1", "R10", "mAP", "mINP"]
    assert len(result.metrics) == 10  # (1 zero-shot + 2 variants x 2 seeds) x 2 protocols
    row = result.metrics[(result.metrics.variant == FULL_CSDN) & (result.metrics.seed == 5)].iloc[0]
    assert (row.protocol, row.R1, row.mAP, row.mINP) == ("all", 35.0, 17.5, 8.75)
    assert list(result.runs.columns) == ["variant", "seed", "train ID acc", "margin", "seconds"]
    assert result.seconds >= 0


def test_run_ablation_input_checks(tmp_path: Path):
    with pytest.raises(ValueError, match="distinct"):
        run_ablation(BASE, seeds=(1, 1), cache_root=tmp_path, measure=fake_measure)
    with pytest.raises(ValueError, match="cache_root"):
        run_ablation(BASE, seeds=(0,), measure=fake_measure)
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        run_ablation(BASE, seeds=(0,), cache_root=tmp_path, jobs=0, measure=fake_measure)


def test_distinct_configs_must_not_share_a_stage3_run(tmp_path: Path):
    def one_key(job, cache_root):  # a cache key that forgot the seed
        return {**fake_measure(job, cache_root), "stage3_key": "k0"}

    run_ablation(BASE, seeds=(0,), variants=[FULL_CSDN], cache_root=tmp_path, measure=one_key, progress=False)
    with pytest.raises(RuntimeError, match="share the stage-3 cache entry k0"):
        run_ablation(BASE, seeds=(0, 2), variants=[FULL_CSDN], cache_root=tmp_path, measure=one_key, progress=False)


def tidy(values: dict[str, list[float]], protocols=("all",)) -> pd.DataFrame:
    rows = [
        {"variant": v, "seed": s, "protocol": p, "R1": x, "mAP": x, "mINP": x}
        for v, xs in values.items()
        for s, x in enumerate(xs)
        for p in protocols
    ]
    return pd.DataFrame(rows)


def test_summary_mean_and_sample_sd_by_hand():
    runs = tidy({"b": [10.0, 20.0], "a": [50.0, 52.0, 54.0], "z": [7.0]})
    summary = summarize(runs)
    assert list(summary.index.get_level_values("variant")) == ["b", "a", "z"]  # order of appearance
    b = summary.loc[("b", "all")]
    assert (b["seeds"], b["mAP mean"], b["mAP std"]) == pytest.approx((2, 15.0, np.sqrt(50.0)))
    assert summary.loc[("a", "all"), "R1 std"] == pytest.approx(2.0)
    assert np.isnan(summary.loc[("z", "all"), "mINP std"])
    table = format_summary(summary)
    assert list(table.columns) == ["all R1", "all mAP", "all mINP"]
    assert table.loc["b", "all mAP"] == "15.0 ± 7.1" and table.loc["z", "all R1"] == "7.0"


def test_effects_paired_by_seed_with_t_interval():
    runs = tidy({"ref": [48.0, 49.0, 50.0], "better": [50.0, 52.0, 54.0], "noisy": [49.0, 48.0, 53.0]})
    table = effects(runs, "mAP", [("clear", "better", "ref"), ("noise", "noisy", "ref"), ("absent", "x", "ref")])
    clear, noise = table.iloc[0], table.iloc[1]
    assert len(table) == 2  # the comparison with a missing variant is skipped
    # differences 2, 3, 4: mean 3, sd 1, 95% t (2 dof) = 4.3027 -> ci 4.3027 / sqrt(3) = 2.484
    assert (clear["mAP delta"], clear["sd"], clear["ci"]) == pytest.approx((3.0, 1.0, 2.4841), abs=1e-4)
    assert clear["verdict"] == "helps"
    # differences 1, -1, 3: mean 1, sd 2 -> ci 4.968 > 1
    assert (noise["mAP delta"], noise["sd"]) == pytest.approx((1.0, 2.0))
    assert noise["verdict"] == "within noise"
    worse = effects(tidy({"ref": [48.0, 49.0, 50.0], "bad": [40.0, 41.0, 41.5]}), "mAP", [("x", "bad", "ref")])
    assert worse.iloc[0]["verdict"] == "hurts"
    single = effects(tidy({"ref": [48.0], "one": [50.0]}), "mAP", [("x", "one", "ref")])
    assert single.iloc[0]["verdict"] == "one seed" and np.isnan(single.iloc[0]["ci"])


def test_tables_refuse_malformed_runs():
    with pytest.raises(ValueError, match="lacks columns"):
        summarize(tidy({"a": [1.0]}).drop(columns="mINP"))
    with pytest.raises(ValueError, match="repeated"):
        effects(pd.concat([tidy({"a": [1.0]}), tidy({"a": [2.0]})]))


def test_ablate_command_writes_the_report(tmp_path: Path, monkeypatch, capsys):
    seen = {}

    def fake_run(base, seeds, variants, zero_shot, cache_root, jobs, threads):
        seen.update(seeds=seeds, variants=variants, zero_shot=zero_shot, cache=cache_root, jobs=jobs, threads=threads)
        return run_ablation(base, seeds, variants, zero_shot, cache_root, measure=fake_measure, progress=False)

    monkeypatch.setattr(commands, "run_ablation", fake_run)
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    reports = tmp_path / "reports"
    argv = ["ablate", "--profile", "smoke", "--seeds", "2", "--variants", "vision-only, csdn", "--jobs", "2"]
    args = parser.parse_args([*argv, "--reports", str(reports)])
    args.cache = tmp_path / "cache"
    assert args.func(args) == 0
    assert seen == {
        "seeds": [0, 1],
        "variants": ["vision-only", FULL_CSDN],
        "zero_shot": True,
        "cache": tmp_path / "cache",
        "jobs": 2,
        "threads": None,
    }
    folder = reports / "smoke" / "ablation"
    text = (folder / "ablation.md").read_text()
    assert "csdn ablate --profile smoke --seeds 2 --variants 'vision-only, csdn' --jobs 2" in text
    assert "20.5 ± 0.7" in text  # vision-only R1: 20.0 and 21.0 over seeds 0, 1
    assert "modality stems" not in text.split("## Effects")[1].split("## Variants")[0]  # its rows were not run
    assert "0.205 ± 0.007" in text.split("## Modality gap")[1]  # vision-only's margin over seeds
    metrics = pd.read_csv(folder / "ablation_metrics.csv")
    assert len(metrics) == 10 and set(metrics.variant) == {ZERO_SHOT, "vision-only", FULL_CSDN}
    runs = pd.read_csv(folder / "ablation_runs.csv")
    assert len(runs) == 5 and list(runs.margin[:2]) == [0.1, 0.2]
    assert (folder / "ablation_all.png").stat().st_size > 5_000
    assert (folder / "ablation_gap.png").stat().st_size > 5_000
    assert "ablation of 3 rows x 2 seeds" in capsys.readouterr().out


def test_ablate_command_refuses_zero_seeds(tmp_path: Path):
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    args = parser.parse_args(["ablate", "--profile", "smoke", "--seeds", "0"])
    args.cache = tmp_path
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        args.func(args)


def test_describe_effects_names_what_is_beyond_the_noise():
    runs = tidy({"ref": [48.0, 49.0, 50.0], "better": [50.0, 52.0, 54.0], "noisy": [49.0, 48.0, 53.0]})
    table = effects(runs, "mAP", [("clear", "better", "ref"), ("noise", "noisy", "ref")])
    text = describe_effects(table)
    assert text == (
        "all, mAP points, 3 paired seeds, 95% interval in brackets: beyond the seed noise: "
        "clear +3.0 (±2.5). Within the noise: noise +1.0 (±5.0)."
    )
    single = effects(tidy({"ref": [48.0], "one": [50.0]}), "mAP", [("x", "one", "ref")])
    assert "one seed only" in describe_effects(single)
    with pytest.raises(ValueError, match="not in the effects table"):
        describe_effects(table, "indoor")


@pytest.mark.slow  # trains two smoke networks (random CLIP weights, no pretraining): about 10-30 s
def test_csdn_without_hse_trains_exactly_the_stems_row(tmp_path: Path):
    # the design claim behind "text = csdn - vision-only-stems": without HSE, prompts and SII never reach
    # the images
    from csdn.experiment import Experiment

    base = dataclasses.replace(BASE, validate_every=0, clip=dataclasses.replace(BASE.clip, weights="random"))
    no_hse = dataclasses.replace(base, stage3=dataclasses.replace(base.stage3, hse_visible=0.0, hse_infrared=0.0))
    with_text = Experiment(no_hse, tmp_path, progress=False)
    stems_row = Experiment(get_variant("vision-only-stems").apply(base), tmp_path, progress=False)
    a, b = with_text.network.state_dict(), stems_row.network.state_dict()
    assert "stage1" in with_text.histories  # the text side did train
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_grid_presets_quick_is_notebook_07s_networks_and_full_the_readme_grid(tmp_path: Path):
    seeds, variants = grid_preset("quick")
    assert seeds == (0,) and set(variants) == set(GAP_MODELS.values()) - {ZERO_SHOT}
    assert grid_preset("full") == ((0, 1, 2), None)
    with pytest.raises(CsdnError, match="unknown grid 'huge'"):
        grid_preset("huge")
    plan = ablation_plan(BASE, seeds, variants, tmp_path)  # (its one measured step: smoke-sized)
    stage3 = [item.runs for item in plan.items if item.stage == "stage3"]
    assert stage3 == [(f"{name} (seed 0)",) for name in variants]
    assert all(not item.cached for item in plan.items) and plan.seconds > 0
