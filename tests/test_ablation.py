"""Ablation variants as config transformations, the tidy run table, mean ± sd, paired effects, ``csdn ablate``."""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import csdn.analysis.commands as commands
from csdn.analysis.ablation import (
    COMPARISONS,
    FULL_CSDN,
    VARIANTS,
    ZERO_SHOT,
    check_distinct_run,
    describe_effects,
    effects,
    format_summary,
    get_variant,
    run_ablation,
    summarize,
    variants_frame,
)
from csdn.config import get_profile
from csdn.eval.metrics import Metrics
from csdn.eval.protocols import ProtocolResult

BASE = get_profile("smoke")


def test_full_csdn_row_is_the_profile_itself():
    # the +SII (official) row shares every stage cache with notebooks and `csdn train` of the same seed
    assert get_variant(FULL_CSDN).apply(BASE) == BASE
    assert get_variant(FULL_CSDN).apply(BASE, seed=4) == dataclasses.replace(BASE, seed=4)


def test_each_variant_sets_its_switches():
    m = {v.name: v.apply(BASE, 1) for v in VARIANTS}
    assert all(cfg.seed == 1 for cfg in m.values())
    assert not m["vision-only"].model.uses_text and not m["vision-only"].model.modality_stems
    assert not m["+stems (CSDN w/o HSE)"].model.uses_text and m["+stems (CSDN w/o HSE)"].model.modality_stems
    clip_reid = m["clip-reid"].model
    assert clip_reid.shared_prompts and clip_reid.sii_kind == "none" and not clip_reid.modality_stems
    prompts = m["+modality prompts"].model
    assert not prompts.shared_prompts and prompts.sii_kind == "none" and prompts.modality_stems
    assert m["+SII (attention)"].model.sii_kind == "attention"
    assert m["pairing all"].stage1.pairing == "all" and m["pairing all"].model == BASE.model
    assert m["wording released"].model.prompt_wording == "released"
    assert len({repr(cfg) for cfg in m.values()}) == len(VARIANTS)  # no two rows train the same thing
    # the variant switches never touch data, CLIP, stage-2/3 optimisation or evaluation
    for cfg in m.values():
        assert (cfg.data, cfg.clip, cfg.stage2, cfg.stage3, cfg.eval) == (
            BASE.data,
            BASE.clip,
            BASE.stage2,
            BASE.stage3,
            BASE.eval,
        )


def test_text_variants_refuse_a_base_without_hse():
    no_hse = dataclasses.replace(BASE, stage3=dataclasses.replace(BASE.stage3, hse_visible=0.0, hse_infrared=0.0))
    with pytest.raises(ValueError, match="disables HSE"):
        get_variant("clip-reid").apply(no_hse)
    assert not get_variant("vision-only").apply(no_hse).model.uses_text


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown ablation variant 'CSDN'"):
        get_variant("CSDN")
    with pytest.raises(ValueError, match="unknown ablation variant"):
        run_ablation(BASE, variants=["nope"], evaluate=lambda cfg, zs: {})


def test_comparisons_name_existing_variants():
    names = {v.name for v in VARIANTS}
    assert all(a in names and b in names for _, a, b in COMPARISONS)
    frame = variants_frame()
    assert list(frame.index) == [v.name for v in VARIANTS]
    assert tuple(frame.loc["vision-only", ["sii", "prompt_wording", "pairing"]]) == ("-", "-", "-")
    assert frame.loc["clip-reid", "sii"] == "-" and frame.loc[FULL_CSDN, "sii"] == "official"


def result(r1: float, mAP: float, mINP: float) -> ProtocolResult:
    cmc = np.full(20, 1.0)
    cmc[:9] = r1
    return ProtocolResult("test", (0,), (Metrics(cmc, mAP, mINP, 4, 4),))


def fake_evaluate(calls):
    def evaluate(cfg, zero_shot):
        calls.append((cfg.model.variant, cfg.model.sii, cfg.seed, zero_shot))
        value = 0.1 if zero_shot else 0.2 + 0.1 * cfg.model.modality_stems + 0.01 * cfg.seed
        return {"all": result(value, value / 2, value / 4), "indoor": result(value, value, value)}

    return evaluate


def test_run_ablation_tidy_table():
    calls = []
    runs = run_ablation(
        BASE, seeds=(3, 5), variants=["vision-only", FULL_CSDN], evaluate=fake_evaluate(calls), progress=False
    )
    assert calls == [
        ("csdn", "official", 3, True),
        ("vision-only", "none", 3, False),
        ("csdn", "official", 3, False),
        ("vision-only", "none", 5, False),
        ("csdn", "official", 5, False),
    ]
    assert list(runs.columns) == ["variant", "seed", "protocol", "R1", "R10", "mAP", "mINP", "seconds"]
    assert len(runs) == 10  # (1 zero-shot + 2 variants x 2 seeds) x 2 protocols
    row = runs[(runs.variant == FULL_CSDN) & (runs.seed == 5) & (runs.protocol == "all")].iloc[0]
    assert (row.R1, row.R10, row.mAP, row.mINP) == pytest.approx((35.0, 100.0, 17.5, 8.75))
    assert list(runs[runs.variant == ZERO_SHOT].seed) == [3, 3]


def test_run_ablation_input_checks():
    with pytest.raises(ValueError, match="distinct"):
        run_ablation(BASE, seeds=(1, 1), evaluate=fake_evaluate([]))
    with pytest.raises(ValueError, match="cache_root"):
        run_ablation(BASE, seeds=(0,))


def test_distinct_configs_must_not_share_a_stage3_run():
    seen = {}
    check_distinct_run(seen, "k0", BASE)
    check_distinct_run(seen, "k0", BASE)  # the same configuration again (e.g. a second ablation) is fine
    check_distinct_run(seen, "k1", dataclasses.replace(BASE, seed=1))
    with pytest.raises(RuntimeError, match="seeds 0 and 2"):
        check_distinct_run(seen, "k0", dataclasses.replace(BASE, seed=2))


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

    def fake_run(base, seeds, variants, zero_shot, cache_root):
        seen.update(seeds=seeds, variants=variants, zero_shot=zero_shot, cache=cache_root, profile=base.name)
        return run_ablation(base, seeds, variants, zero_shot, evaluate=fake_evaluate([]), progress=False)

    monkeypatch.setattr(commands, "run_ablation", fake_run)
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    reports = tmp_path / "reports"
    args = parser.parse_args(
        [
            "ablate",
            "--profile",
            "smoke",
            "--seeds",
            "2",
            "--variants",
            "vision-only, +SII (official)",
            "--reports",
            str(reports),
        ]
    )
    args.cache = tmp_path / "cache"
    assert args.func(args) == 0
    assert seen == {
        "seeds": [0, 1],
        "variants": ["vision-only", FULL_CSDN],
        "zero_shot": True,
        "cache": tmp_path / "cache",
        "profile": "smoke",
    }
    folder = reports / "smoke" / "ablation"
    text = (folder / "ablation.md").read_text()
    assert "csdn ablate --profile smoke --seeds 2 --variants 'vision-only, +SII (official)'" in text
    assert "20.5 ± 0.7" in text  # vision-only R1: 20.0 and 21.0 over seeds 0, 1
    assert "modality stems" not in text.split("## Effects")[1].split("## Variants")[0]  # its rows were not run
    runs = pd.read_csv(folder / "ablation_runs.csv")
    assert len(runs) == 10 and set(runs.variant) == {ZERO_SHOT, "vision-only", FULL_CSDN}
    assert (folder / "ablation_all.png").stat().st_size > 5_000
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
    # the design claim behind "+stems (CSDN w/o HSE)": without HSE, prompts and SII never reach the images
    from csdn.experiment import Experiment

    base = dataclasses.replace(BASE, validate_every=0, clip=dataclasses.replace(BASE.clip, weights="random"))
    no_hse = dataclasses.replace(base, stage3=dataclasses.replace(base.stage3, hse_visible=0.0, hse_infrared=0.0))
    with_text = Experiment(no_hse, tmp_path, progress=False)
    stems_row = Experiment(get_variant("+stems (CSDN w/o HSE)").apply(base), tmp_path, progress=False)
    a, b = with_text.network.state_dict(), stems_row.network.state_dict()
    assert "stage1" in with_text.histories  # the text side did train
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
