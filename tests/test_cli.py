"""The csdn console script: commands run on the smoke profile; bad input gives a clear one-line error."""

import json
from pathlib import Path

import pytest

from csdn.cli import build_parser, experiment_config, main
from csdn.config import get_profile
from csdn.errors import CsdnError
from csdn.experiment import Experiment
from csdn.plan import demo_runs


def test_synth_writes_layouts(tmp_path: Path, capsys) -> None:
    assert main(["--cache", str(tmp_path), "synth", "--profile", "smoke", "--layout", "regdb"]) == 0
    assert "regdb layout" in capsys.readouterr().out
    assert list((tmp_path / "synthvi").glob("regdb-*/idx/train_visible_1.txt"))


def test_real_profile_without_data_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["--cache", str(tmp_path), "train", "--profile", "sysu-rn50"]) == 2
    assert "needs the dataset folder" in capsys.readouterr().err


def test_missing_dataset_folder_is_named(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--cache", str(tmp_path), "stats", "--dataset", "sysu", "--data", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_demo_on_smoke_writes_a_report(tmp_path: Path, capsys) -> None:
    reports = tmp_path / "reports"
    argv = ["--cache", str(tmp_path / "cache"), "demo", "--profile", "smoke", "--reports", str(reports)]
    code = main(argv)
    assert code == 0
    out = capsys.readouterr().out
    assert "zero-shot CLIP" in out and "SYSU-MM01 at " in out
    assert "Training plan: 5 of the 5 trained artifacts needed" in out  # the plan, before anything trains
    folder = reports / "smoke-csdn-seed0"
    summary = json.loads((folder / "results.json").read_text())["summary"]
    assert {(row["model"], row["protocol"]) for row in summary} == {
        (model, protocol)
        for model in ("csdn", "vision-only", "zero-shot CLIP", "attribute oracle (ceiling)")
        for protocol in ("all 1-shot", "indoor 1-shot")
    }
    assert all(0 <= row["mAP"] <= 100 for row in summary)
    oracle = [row for row in summary if row["model"].startswith("attribute oracle")]
    assert all(row["mAP"] > 50 for row in oracle)  # the world is solvable from invariant attributes
    assert (folder / "cmc_all_1_shot.png").stat().st_size > 0
    assert (folder / "vision-only-stage3.csv").is_file() and (folder / "stage3.csv").is_file()

    # what notebooks 00, 05 and 08 compare (the profile as the notebooks build it) is now in the cache
    for cfg in demo_runs(get_profile("smoke")).values():
        assert Experiment(cfg, tmp_path / "cache").is_trained

    # a second run trains nothing: every stage is loaded from the cache
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Everything needed is in the cache" in out
    stages = json.loads((folder / "stages.json").read_text())
    assert set(stages) == {"stage1", "stage2", "stage3", "vision-only-stage3"}
    assert all(entry["loaded_from_cache"] for entry in stages.values())
    rows = json.loads((folder / "results.json").read_text())["summary"]
    assert {row["model"] for row in rows} == {row["model"] for row in summary}


# -- config overrides: --set, --config and the convenience flags, one path ------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One artifact cache for the CLI runs of this module (SynthVI and the tiny CLIP are built once)."""
    return tmp_path_factory.mktemp("cli-cache")


def _config(argv: list[str]):
    args = build_parser().parse_args(argv)
    return experiment_config(args)


def test_train_with_set_overrides_records_them_in_the_report(cache: Path, tmp_path: Path, capsys) -> None:
    reports = tmp_path / "reports"
    code = main(
        [
            "--cache",
            str(cache),
            "train",
            "--profile",
            "smoke",
            "--set",
            "stage3.epochs=1",
            "--set",
            "model.sii=attention",
            "--reports",
            str(reports),
        ]
    )
    assert code == 0
    assert "profile smoke; overrides: stage3.epochs=1, model.sii=attention" in capsys.readouterr().out
    (folder,) = reports.iterdir()  # the default run folder: profile, variant, seed and a hash of the rest
    assert folder.name.startswith("smoke-csdn-seed0-")
    report = json.loads((folder / "results.json").read_text())
    assert report["overrides"] == {"stage3.epochs": 1, "model.sii": "attention"}
    assert report["config"]["stage3"]["epochs"] == 1 and report["config"]["model"]["sii"] == "attention"
    assert len(report["histories"]["stage3"]) == 1  # the override reached the training
    header = (folder / "results.md").read_text().splitlines()
    assert header[0].startswith("Run: profile smoke, variant csdn, seed 0, SII attention, CLIP tiny-synthvi")
    assert header[2] == "Overrides: `stage3.epochs=1, model.sii=attention`"


def test_flags_then_config_files_then_set_entries(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("model:\n  sii: mean\nstage3.epochs: 4\nclip:\n  pretrain:\n    epochs: 3\n")
    (tmp_path / "b.json").write_text(json.dumps({"stage3": {"epochs": 5}, "stage3.milestones": [2, 4]}))
    cfg, overrides = _config(
        [
            "train",
            "--profile",
            "smoke",
            "--sii",
            "attention",
            "--seed",
            "7",
            "--clip",
            "random",
            "--config",
            str(tmp_path / "a.yaml"),
            "--config",
            str(tmp_path / "b.json"),
            "--set",
            "seed=8",
            "--set",
            "eval.flip=false",
        ]
    )
    assert overrides == {
        "seed": 8,
        "clip.weights": "random",
        "model.sii": "mean",
        "stage3.epochs": 5,
        "clip.pretrain.epochs": 3,
        "stage3.milestones": [2, 4],
        "eval.flip": False,
    }
    assert (cfg.seed, cfg.clip.weights, cfg.model.sii, cfg.stage3.epochs, cfg.stage3.milestones) == (
        8,
        "random",
        "mean",
        5,
        (2, 4),
    )
    assert cfg.clip.pretrain.epochs == 3 and cfg.eval.flip is False
    assert _config(["train", "--profile", "smoke"]) == (get_profile("smoke"), {})  # no flag, no override


@pytest.mark.parametrize("command", ["synth", "stats", "pretrain-clip", "train", "eval", "demo", "ablate", "gap"])
def test_every_config_command_takes_set_and_config(command: str, tmp_path: Path) -> None:
    (tmp_path / "o.yml").write_text("clip.pretrain.epochs: 1\n")
    cfg, overrides = _config([command, "--profile", "smoke", "--set", "seed=3", "--config", str(tmp_path / "o.yml")])
    assert cfg.seed == 3 and cfg.clip.pretrain.epochs == 1
    assert overrides == {"clip.pretrain.epochs": 1, "seed": 3}


def test_dataset_and_layout_flags_are_overrides_too() -> None:
    cfg, overrides = _config(["stats", "--profile", "smoke", "--layout", "regdb"])
    assert cfg.data.synth_layout == "regdb" and overrides == {"data.synth_layout": "regdb"}
    cfg, overrides = _config(["stats", "--profile", "smoke", "--dataset", "llcm", "--data", "/data/llcm"])
    assert (cfg.data.dataset, cfg.data.root) == ("llcm", "/data/llcm")
    cfg, _ = _config(["gap", "--profile", "smoke", "--seed", "2", "--clip", "random", "--device", "cpu"])
    assert (cfg.seed, cfg.clip.weights, cfg.device) == (2, "random", "cpu")


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--set", "stage3.epoch=1"],
            "unknown key 'stage3.epoch' (did you mean 'stage3.epochs'?); stage3 has: epochs, ",
        ),
        (["--set", "stage3.epochs=ten"], "stage3.epochs must be int, got str 'ten'"),
        (["--set", "stage3.epochs"], "override 'stage3.epochs' is not KEY=VALUE"),
        (["--set", "select=best_val", "--set", "validate_every=0"], "select='best_val' needs validation"),
        (["--set", "model.sii=fancy"], "model.sii=fancy: sii must be one of"),
        (["--sii", "none", "--set", "stage3=3"], "stage3 is a config section (ReIDStageConfig)"),
        (["--config", "nowhere.yaml"], "nowhere.yaml: cannot read the overrides file"),
        # a flag either acts or is refused
        (["--data", "/data/SYSU-MM01"], "a data root (/data/SYSU-MM01) is for a real dataset, but the data is SynthVI"),
        (["--arch", "RN50"], "clip.weights='tiny-synthvi' pretrains a tiny CLIP"),
        (["--set", "clip.arch=csdn-tiny-vit"], "set both (the CLI's --arch csdn-tiny-vit does)"),
        (["--variant", "vision-only", "--sii", "attention"], "--sii attention acts on variant csdn only"),
        (["--trial", "3"], "--trial picks a RegDB trial, but the data is SynthVI (SYSU-MM01 protocol)"),
        (["--shots", "1", "10", "--set", "data.synth_layout=llcm"], "--shots sets SYSU-MM01's gallery shots"),
        (["--trials", "3", "--set", "data.synth_layout=regdb"], "--trials: RegDB's test split has one fixed gallery"),
        (["--validate-every", "2", "--set", "data.synth_layout=llcm"], "--validate-every validates on SYSU-MM01"),
        (["--validate-every", "2", "--set", "data.hold_out_val=false"], "--validate-every needs held-out val ids"),
        (["--ids-per-gpu", "0"], "--ids-per-gpu must be >= 1"),
        (["--no-sync-bn"], "--sync-bn / --no-sync-bn act under torchrun only"),
        (["--set", "stage3.epochs=0"], "stage-3 epochs must be >= 1"),
        (["--set", "stage1.epochs=-1"], "epochs must be >= 0"),
    ],
)
def test_bad_overrides_give_one_line_and_exit_2(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "--cache",
            str(tmp_path / "cache"),
            "train",
            "--profile",
            "smoke",
            *args,
            "--reports",
            str(tmp_path / "reports"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("csdn: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "reports").exists()  # nothing ran


def test_bad_override_file_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.yaml").write_text("stage3:\n  epochs: [1,\n")
    assert main(["--cache", str(tmp_path), "ablate", "--profile", "smoke", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert f"csdn: error: {tmp_path / 'bad.yaml'}: not valid YAML" in capsys.readouterr().err


def test_genuine_bugs_keep_their_traceback(cache: Path, tmp_path: Path, monkeypatch) -> None:
    import csdn.experiment

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")  # a bug, not bad input: the CLI must not swallow it

    monkeypatch.setattr(csdn.experiment.pipeline, "train_prompts", broken)
    with pytest.raises(RuntimeError, match="shape mismatch") as error:
        main(
            [
                "--cache",
                str(cache),
                "train",
                "--profile",
                "smoke",
                "--set",
                "stage1.epochs=1",
                "--reports",
                str(tmp_path / "reports"),
            ]
        )
    assert not isinstance(error.value, CsdnError)
    assert any(entry.name == "broken" for entry in error.traceback)  # raised where the bug is


def test_ablate_records_its_overrides(tmp_path: Path, monkeypatch, capsys) -> None:

    import csdn.cli.studies as commands

    bases = []

    from csdn.analysis.ablation import run_ablation

    def fake_measure(job, cache_root):
        metrics = {"R1": 50.0, "R10": 90.0, "mAP": 40.0, "mINP": 20.0}
        record = {"stage3_key": None, "results": {"all": metrics}, "run": {"margin": 0.1, "seconds": 1.0}}
        return {**record, "name": job.name, "seed": job.seed}

    def fake_run(base, seeds, variants, zero_shot, cache_root, jobs, threads):
        bases.append(base)
        return run_ablation(base, seeds, variants, zero_shot, cache_root, measure=fake_measure, progress=False)

    monkeypatch.setattr(commands, "run_ablation", fake_run)
    reports = tmp_path / "reports"
    assert (
        main(
            [
                "--cache",
                str(tmp_path),
                "ablate",
                "--profile",
                "smoke",
                "--seeds",
                "1",
                "--variants",
                "vision-only",
                "--set",
                "stage3.epochs=1",
                "--clip",
                "random",
                "--reports",
                str(reports),
            ]
        )
        == 0
    )
    assert bases[0].stage3.epochs == 1 and bases[0].clip.weights == "random"
    text = (reports / "smoke" / "ablation" / "ablation.md").read_text()
    assert "--clip random --seeds 1 --variants vision-only --set stage3.epochs=1" in text
    assert "Overrides: `clip.weights=random, stage3.epochs=1`" in text
    assert "overrides: clip.weights=random, stage3.epochs=1" in capsys.readouterr().out


def test_one_report_writer_for_figures_text_and_json(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from csdn.reports import write_report_files

    figure, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    written = write_report_files(
        tmp_path / "r", {"a.md": "# title\n", "b.json": {"overrides": {"seed": 1}}, "c.csv": b"x\n1\n", "d.png": figure}
    )
    assert [p.name for p in written] == ["a.md", "b.json", "c.csv", "d.png"]
    assert (tmp_path / "r" / "a.md").read_text() == "# title\n"
    assert json.loads((tmp_path / "r" / "b.json").read_text()) == {"overrides": {"seed": 1}}
    assert (tmp_path / "r" / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(figure.number)  # written figures are closed
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["a.md", "b.json", "c.csv", "d.png"]  # no temp files


def test_gap_checks_its_projection_methods_before_any_training(tmp_path: Path, capsys) -> None:
    assert main(["--cache", str(tmp_path / "cache"), "gap", "--profile", "smoke", "--methods", "PCA"]) == 2
    assert "csdn: error: methods must be a non-empty subset of" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--trial", "4", "--set", "data.synth_layout=regdb"], {"data.regdb_trial": 4}),
        (["--validate-every", "3"], {"validate_every": 3}),
        (["--select", "best_val"], {"select": "best_val"}),
        (["--trials", "4"], {"eval.trials": 4}),
        (["--shots", "1", "10"], {"eval.sysu_shots": [1, 10]}),
        (["--rerank"], {"eval.rerank": True}),
        (["--no-rerank"], {"eval.rerank": False}),
        (["--workers", "3"], {"stage3.workers": 3}),
        (["--ids-per-gpu", "6"], {"stage3.ids_per_batch": 6}),  # one process: the global batch itself
        (["--arch", "csdn-tiny-vit"], {"clip.arch": "csdn-tiny-vit", "clip.pretrain.arch": "csdn-tiny-vit"}),
        (["--arch", "RN50", "--clip", "random"], {"clip.arch": "RN50", "clip.weights": "random"}),
    ],
)
@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_run_flags_map_to_their_overrides(command: str, flags: list[str], expected: dict, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg, overrides = _config([command, "--profile", "smoke", *flags])
    assert {k: v for k, v in overrides.items() if not k.startswith("data.synth")} == expected
    for key, value in expected.items():
        field = cfg
        for part in key.split("."):
            field = getattr(field, part)
        assert field == (tuple(value) if isinstance(value, list) else value)


def test_ids_per_gpu_scales_the_global_batch_with_the_torchrun_processes(monkeypatch) -> None:
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg, overrides = _config(["train", "--profile", "smoke", "--ids-per-gpu", "3"])
    assert overrides == {"stage3.ids_per_batch": 12} and cfg.stage3.ids_per_batch == 12
    from csdn.data.sampler import CrossModalitySampler

    labels = [i // 2 for i in range(2 * 12)]  # 12 identities, 2 images each per modality
    shares = [CrossModalitySampler(labels, labels, 12, 2, rank=r, world_size=4) for r in range(4)]
    assert [len({labels[i] for i in next(iter(s))[0]}) for s in shares] == [3, 3, 3, 3]  # 3 ids on each process


def test_every_flag_of_the_table_has_help_on_the_run_commands() -> None:
    from csdn.cli import FLAG_OVERRIDES

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("train", "eval", "demo"):
        actions = {a.dest: a for a in commands[name]._actions}
        run_flags = set(FLAG_OVERRIDES) - {"layout"}  # --layout belongs to synth and stats
        assert run_flags <= set(actions), run_flags - set(actions)
        assert all(actions[dest].help for dest in run_flags)


def test_layout_is_refused_for_a_real_dataset(tmp_path: Path, capsys) -> None:
    argv = ["--cache", str(tmp_path), "stats", "--dataset", "sysu", "--data", str(tmp_path), "--layout", "regdb"]
    assert main(argv) == 2
    assert "--layout is the layout SynthVI is written in; sysu is read in its own" in capsys.readouterr().err
