"""The run folder of csdn train/eval/demo: config, versions, per-epoch log, CSV, TensorBoard, report, links."""

import csv
import json
import sys
from pathlib import Path

import pytest

import csdn.train.loop
from csdn.cli import build_parser, experiment_config, main, run_folder_path
from csdn.config import get_profile
from csdn.runs import RunFolder, default_run_name, format_metrics, history_csv

TINY = ["--set", "stage1.epochs=1", "--set", "stage2.epochs=1", "--set", "stage3.epochs=1"]
STAGES = ("stage1", "stage2", "stage3")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One artifact cache for this module's runs (SynthVI, the tiny CLIP and the tiny stages built once)."""
    return tmp_path_factory.mktemp("runs-cache")


def _train(cache: Path, *extra: str) -> int:
    return main(["train", "--profile", "smoke", *TINY, "--cache", str(cache), *extra])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _assert_complete(folder: Path, cache: Path) -> None:
    """Everything a finished tiny smoke run leaves in its run folder."""
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == "smoke" and config["stage3"]["epochs"] == 1 and config["model"]["variant"] == "csdn"
    assert json.loads((folder / "overrides.json").read_text()) == {f"stage{i}.epochs": 1 for i in (1, 2, 3)}
    version = json.loads((folder / "version.json").read_text())
    assert version["csdn"] and version["torch"] and version["command"].startswith("csdn train --profile smoke")
    assert version["cache"] == str(cache.resolve())
    log = (folder / "log.txt").read_text()
    for stage in STAGES:
        assert f"{stage} epoch 1/1 loss=" in log and " lr=" in log
        rows = _rows(folder / f"{stage}.csv")
        assert len(rows) == 1 and rows[0]["epoch"] == "1" and float(rows[0]["loss"]) > 0
        assert float(rows[0]["seconds"]) >= 0 and "lr" in rows[0]
        link = folder / "stages" / stage
        assert link.is_symlink() and (link / "done.json").is_file()
        assert link.resolve().parent == (cache / "runs").resolve()
    assert "val_mAP" in _rows(folder / "stage3.csv")[0]  # the smoke profile validates every epoch
    listing = json.loads((folder / "stages.json").read_text())
    assert set(listing) == set(STAGES) and all(Path(entry["path"]).is_dir() for entry in listing.values())
    scalars = _scalars(folder)
    assert {f"{stage}/loss" for stage in STAGES} <= set(scalars)
    assert scalars["stage3/loss"] == [(1, pytest.approx(float(_rows(folder / "stage3.csv")[0]["loss"])))]
    report = json.loads((folder / "results.json").read_text())
    assert report["run_folder"] == str(folder) and report["config"]["seed"] == 0
    assert (folder / "results.md").read_text().startswith("Run: profile smoke, variant csdn, seed 0, SII official")
    assert (folder / "cmc_all_1_shot.png").stat().st_size > 0


def test_train_out_writes_a_complete_run_folder_and_a_warm_cache_run_too(cache: Path, tmp_path: Path, capsys) -> None:
    cold = tmp_path / "cold"
    assert _train(cache, "--out", str(cold)) == 0
    out = capsys.readouterr().out
    assert f"into run folder {cold}" in out.splitlines()[0]  # said first
    assert "stage3 epoch 1/1 loss=" in out and "loaded from cache" not in out
    _assert_complete(cold, cache)
    assert '"loaded_from_cache": false' in (cold / "stages.json").read_text()

    warm = tmp_path / "warm"
    assert _train(cache, "--out", str(warm)) == 0
    out = capsys.readouterr().out
    assert all(f"{stage}: loaded from cache (1 epochs)" in out for stage in STAGES)
    assert "training 1 epoch" not in out
    _assert_complete(warm, cache)
    assert "(cached)" in (warm / "log.txt").read_text()
    for stage in STAGES:  # the stored history, the same as the cold run's
        assert _rows(warm / f"{stage}.csv") == _rows(cold / f"{stage}.csv")


def test_a_second_run_into_the_same_folder_appends_its_log_and_replaces_the_rest(cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "again"
    assert _train(cache, "--out", str(folder)) == 0
    assert _train(cache, "--out", str(folder)) == 0
    assert (folder / "log.txt").read_text().count("csdn train (profile smoke") == 2
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert _scalars(folder)["stage1/loss"][0][0] == 1 and len(_scalars(folder)["stage1/loss"]) == 1
    _assert_complete(folder, cache)


def test_default_run_folder_is_named_by_profile_variant_and_seed(cache: Path, tmp_path: Path) -> None:
    def folder(*argv: str) -> Path:
        args = build_parser().parse_args(["train", "--profile", "smoke", "--reports", str(tmp_path), *argv])
        return run_folder_path(args, *experiment_config(args))

    assert folder() == tmp_path / "smoke-csdn-seed0"
    assert folder("--seed", "1") == tmp_path / "smoke-csdn-seed1" != folder("--seed", "2")
    assert folder("--variant", "clip-reid", "--seed", "3") == tmp_path / "smoke-clip-reid-seed3"
    other = folder("--sii", "mean")  # other overrides: a short hash, so runs of other configs don't collide
    assert other.name.startswith("smoke-csdn-seed0-") and other != folder("--sii", "attention")
    assert folder("--sii", "mean") == other  # the same command, the same folder
    assert folder("--out", str(tmp_path / "mine")) == tmp_path / "mine"

    assert _train(cache, "--reports", str(tmp_path / "reports"), "--seed", "0") == 0  # no --out: the default
    (made,) = (tmp_path / "reports").iterdir()
    assert made.name.startswith("smoke-csdn-seed0-") and (made / "results.json").is_file()


def test_a_killed_stage_resumes_and_says_from_which_epoch(cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    save = csdn.train.loop._save

    def save_then_die(stage, run_dir, epoch, history, keep):
        save(stage, run_dir, epoch, history, keep)
        if stage.name.startswith("stage3") and epoch == 1:
            raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(csdn.train.loop, "_save", save_then_die)
    folder = tmp_path / "resume"
    argv = ["train", "--profile", "smoke", *TINY, "--set", "stage3.epochs=2", "--out", str(folder)]
    assert main(["--cache", str(cache), *argv]) == 130  # Ctrl-C: one line, the shell's status for SIGINT
    assert "stopped: KeyboardInterrupt" in (folder / "log.txt").read_text()
    monkeypatch.setattr(csdn.train.loop, "_save", save)
    capsys.readouterr()

    assert main(["--cache", str(cache), *argv]) == 0
    out = capsys.readouterr().out
    assert "stage3: resuming from epoch 1 of 2 (checkpoint in " in out
    assert "stage3 epoch 2/2 loss=" in out and "stage3 epoch 1/2" not in out
    assert "(checkpoint)" in (folder / "log.txt").read_text()  # epoch 1, from the checkpoint, in the log file
    assert [row["epoch"] for row in _rows(folder / "stage3.csv")] == ["1", "2"]  # the resumed epoch included
    assert [step for step, _ in _scalars(folder)["stage3/loss"]] == [1, 2]


# -- the parts, without training ----------------------------------------------------------------------


def test_cache_is_accepted_before_and_after_every_command(tmp_path: Path) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # every subcommand, ablate and gap included
    assert {"synth", "stats", "pretrain-clip", "train", "eval", "demo", "ablate", "gap"} <= set(commands)
    positional = {"convert-release": ["in.pth", "out.safetensors"], "embed": ["--out", "f.npz"]}  # required arguments
    for command in commands:
        rest = positional.get(command, [])
        before = parser.parse_args(["--cache", str(tmp_path / "a"), command, *rest])
        after = parser.parse_args([command, *rest, "--cache", str(tmp_path / "b")])
        assert (before.cache, after.cache) == (tmp_path / "a", tmp_path / "b"), command
        assert parser.parse_args([command, *rest]).cache is None  # main() then picks $CSDN_CACHE or the default


def test_cache_after_the_command_is_used(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--profile", "smoke", "--layout", "regdb", "--cache", str(tmp_path)]) == 0
    assert list((tmp_path / "synthvi").glob("regdb-*/idx/train_visible_1.txt"))


def test_default_run_name_spells_out_seed_and_variant_only() -> None:
    smoke = get_profile("smoke")
    assert default_run_name(smoke, {}) == "smoke-csdn-seed0"
    assert default_run_name(smoke, {"seed": 0, "model.variant": "csdn"}) == "smoke-csdn-seed0"
    a, b = default_run_name(smoke, {"stage3.epochs": 1}), default_run_name(smoke, {"stage3.epochs": 2})
    assert a != b and a.startswith("smoke-csdn-seed0-") and len(a.rsplit("-", 1)[1]) == 8


def test_history_columns_and_log_line_have_one_order() -> None:
    row = {"val_mAP": 0.5, "seconds": 2.0, "acc": 0.25, "lr": 3e-4, "id_loss": 1.5, "loss": 2.0, "epoch": 1}
    assert history_csv([row, {**row, "epoch": 2}]).splitlines() == [
        "epoch,loss,id_loss,acc,val_mAP,lr,seconds",
        "1,2.0,1.5,0.25,0.5,0.0003,2.0",
        "2,2.0,1.5,0.25,0.5,0.0003,2.0",
    ]
    assert format_metrics(row) == "loss=2 id_loss=1.5 acc=0.25 val_mAP=0.5 lr=3.000e-04 2.0s"


def test_without_tensorboard_or_symlinks_the_rest_is_still_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the package missing: import fails
    monkeypatch.setattr(Path, "symlink_to", lambda *a, **k: (_ for _ in ()).throw(OSError("not supported")))
    lines: list[str] = []
    run = RunFolder(tmp_path / "run", echo=lines.append)
    run.start("train", get_profile("smoke"), {}, ["train"], tmp_path / "cache")
    stage_dir = tmp_path / "cache" / "runs" / "stage1-abc"
    stage_dir.mkdir(parents=True)
    log = run.stage("stage1")
    log.started(stage_dir, 0, [], 2)
    log.epoch_done({"epoch": 1, "loss": 1.0, "lr": 0.1, "seconds": 0.5}, 2)
    run.stage_done("stage1", stage_dir, [{"epoch": 1, "loss": 1.0, "lr": 0.1, "seconds": 0.5}], loaded=False)
    run.close()
    assert any("TensorBoard logging is off" in line and "pip install tensorboard" in line for line in lines)
    assert any("stage1: no symbolic link (not supported); see stages.json" in line for line in lines)
    assert json.loads((tmp_path / "run" / "stages.json").read_text())["stage1"]["path"] == str(stage_dir.resolve())
    assert len(_rows(tmp_path / "run" / "stage1.csv")) == 1
    assert "stage1 epoch 1/2 loss=1 lr=1.000e-01 0.5s" in (tmp_path / "run" / "log.txt").read_text()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_an_unusable_run_folder_is_one_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    argv = ["train", "--profile", "smoke", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "taken")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"csdn: error: cannot create the run folder {tmp_path / 'taken'}") and "--out" in err
    assert not (tmp_path / "cache").exists()  # stopped before any work


def test_progress_lines_print_a_few_epochs_the_time_left_and_the_end(tmp_path: Path) -> None:
    from csdn.runs import ProgressLines

    lines: list[str] = []
    observer = ProgressLines("CSDN", lines=3, echo=lines.append)
    stage = observer.stage("stage3")
    stage.started(tmp_path, 0, [], 7)
    history = []
    for epoch in range(1, 8):
        row = {"epoch": epoch, "loss": 1.0 / epoch, "seconds": 2.0, **({"val_mAP": 0.25} if epoch == 4 else {})}
        history.append(row)
        stage.epoch_done(row, 7)
    observer.stage_done("stage3", tmp_path, history, loaded=False)
    observer.stage_done("stage1", tmp_path, history[:2], loaded=True)
    assert lines[0] == "CSDN: stage3 training 7 epochs"
    assert [line.split(":")[1].strip() for line in lines[1:4]] == [
        "stage3 epoch 3/7",
        "stage3 epoch 6/7",
        "stage3 epoch 7/7",
    ]
    assert "validation mAP 25.0% (epoch 4)" in lines[2] and "left" in lines[2] and "left" not in lines[3]
    assert lines[4] == "CSDN: stage3 done: 7 epochs, 14 s of training"
    assert lines[5] == "CSDN: stage1 loaded from the cache (2 epochs)"
    resumed = ProgressLines(echo=lines.append).stage("stage2")
    resumed.started(tmp_path, 2, history[:2], 5)
    assert lines[-1] == "stage2 resuming at epoch 3 of 5 (checkpoint)"
