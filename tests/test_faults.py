"""Faults: SIGKILL at any moment, non-finite losses, unreadable images, foreign checkpoints.

Each test asserts the message the user sees and that nothing was lost or left half-written. The kill
tests run real ``python -m csdn train`` subprocesses; a small hook pauses the run at the chosen moment
(mid-epoch, mid-checkpoint), the test sends SIGKILL, and a plain rerun must end with exactly the
weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import csdn.cli.options
from csdn import __version__
from csdn.cli import main
from csdn.config import get_profile
from csdn.data.cache import ImageCache
from csdn.data.protocol import DatasetError
from csdn.data.records import Record
from csdn.experiment import DONE, FINAL, Experiment
from csdn.sources import open_dataset
from csdn.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

# Runs the csdn CLI, pausing (and announcing it in a marker file) at a chosen moment of stage 3.
PAUSING_CLI = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    marker, moment = Path(sys.argv[1]), sys.argv[2]

    def pause():
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # the test kills us here

    if moment == "mid-epoch":  # stage 3, epoch 2, after two optimizer steps
        import csdn.train.loop as loop
        original, ticks = loop._tick, []

        def tick(stage, bar):  # the loop's per-step hook, after each optimizer step
            original(stage, bar)
            if stage.name.startswith("stage3"):
                ticks.append(1)
                if len(ticks) == stage.steps_per_epoch + 2:
                    pause()

        loop._tick = tick
    elif moment == "mid-checkpoint":  # the last epoch's weights are written, its training state is not
        import torch
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            if ".epoch_0002." in str(f):
                pause()
            return original_save(obj, f, *args, **kwargs)

        torch.save = save
    from csdn.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CSDN_PROFILE", "CSDN_CACHE")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _train_args(cache: Path, reports: Path) -> list[str]:
    return ["--cache", str(cache), "train", "--profile", "smoke", "--reports", str(reports)]


def _train(cache: Path, reports: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "csdn", *_train_args(cache, reports)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _run_dir(cache: Path, stage: str) -> Path:
    (run,) = [p for p in (cache / "runs").glob(f"{stage}-*") if p.is_dir()]
    return run


def _half_written(cache: Path) -> list[Path]:
    """Temporary files and directories of interrupted writes."""
    return [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".part")) or p.name.startswith(".epoch_")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process smoke run from scratch (its cache)."""
    root = tmp_path_factory.mktemp("reference")
    _train(root / "cache", root / "reports")
    return root / "cache"


def _copy(reference: Path, dst: Path, stages: tuple[str, ...] = ("stage1", "stage2")) -> Path:
    """``reference``'s data, CLIP and caches, and the runs of ``stages`` (not the other stages)."""
    shutil.copytree(reference, dst, ignore=shutil.ignore_patterns("runs"))
    for stage in stages:
        shutil.copytree(_run_dir(reference, stage), dst / "runs" / _run_dir(reference, stage).name)
    return dst


# -- SIGKILL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["mid-epoch", "mid-checkpoint"])
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(
    reference: Path, tmp_path: Path, moment: str
) -> None:
    # mid-epoch: a run from scratch (data, CLIP, stages 1-3 all computed by the killed process);
    # mid-checkpoint: stages 1-2 come from the cache
    cache = tmp_path / "cache" if moment == "mid-epoch" else _copy(reference, tmp_path / "cache")
    marker = tmp_path / "paused"
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSING_CLI, str(marker), moment, *_train_args(cache, tmp_path / "reports")],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, f"the run ended before the pause: {process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the run never reached the pause"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL

    run = _run_dir(cache, "stage3")
    assert not (run / DONE).exists() and not (run / FINAL).exists()
    assert latest_checkpoint(run).name == "epoch_0001"  # the last complete checkpoint
    if moment == "mid-checkpoint":
        assert list((run / "checkpoints").glob(".epoch_0002.*"))  # the killed write, never pointed at

    _train(cache, tmp_path / "reports")  # the same command again resumes

    expected, resumed = load_file(str(_run_dir(reference, "stage3") / FINAL)), load_file(str(run / FINAL))
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    history = [json.loads((r / DONE).read_text())["history"] for r in (_run_dir(reference, "stage3"), run)]
    assert [h["loss"] for h in history[0]] == [h["loss"] for h in history[1]]
    assert _half_written(cache) == []  # the interrupted checkpoint's temporary directory is gone


# -- non-finite loss ----------------------------------------------------------------------------------


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    reference: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    cache = _copy(reference, tmp_path / "cache")
    smoke = get_profile("smoke")
    # epoch 2 multiplies the learning rate by 1e30: the weights blow up and the loss becomes NaN
    exploding = dataclasses.replace(
        smoke, stage3=dataclasses.replace(smoke.stage3, epochs=3, milestones=(1,), gamma=1e30)
    )
    monkeypatch.setattr(csdn.cli.options, "profile_config", lambda name, data_root, overrides: exploding)
    code = main(_train_args(cache, tmp_path / "reports"))
    err = capsys.readouterr().err
    assert code == 2
    assert "csdn: error: non-finite loss (nan) in stage 3 epoch 2" in err and "last good checkpoint is kept" in err
    assert "Traceback" not in err

    experiment = Experiment(exploding, cache, progress=False)
    run = cache / "runs" / f"stage3-{experiment.stage3_key}"
    assert not (run / DONE).exists() and not (run / FINAL).exists()
    last = latest_checkpoint(run)
    assert last.name == "epoch_0001"
    weights = load_file(str(last / "model.safetensors"))
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    assert len(json.loads((run / "history.json").read_text())) == 1  # epoch 1's metrics, nothing after
    assert (cache / "runs" / f"stage1-{experiment.stage1_key}" / DONE).is_file()  # earlier stages: done
    assert _half_written(cache) == []
    (log,) = (tmp_path / "reports").glob("*/log.txt")  # the run folder keeps the log of the stopped run, no report
    assert "stopped: NonFiniteLossError" in log.read_text() and not list(log.parent.glob("results.*"))


# -- unreadable images --------------------------------------------------------------------------------


def _break_two_training_images(cache: Path) -> list[str]:
    records = open_dataset(get_profile("smoke").data, cache, progress=False).train
    corrupt, truncated = Path(records[0].path), Path(records[5].path)
    corrupt.write_bytes(b"this is not an image")
    truncated.write_bytes(truncated.read_bytes()[:40])
    return [str(corrupt), str(truncated)]


def test_unreadable_image_stops_the_run_naming_it(reference: Path, tmp_path: Path, capsys) -> None:
    cache = _copy(reference, tmp_path / "cache", stages=())
    bad = _break_two_training_images(cache)
    images_before = sorted(p.name for p in (cache / "images").iterdir() if p.is_dir())
    assert main(_train_args(cache, tmp_path / "reports")) == 2
    err = capsys.readouterr().err
    assert f"csdn: error: {bad[0]}: not a readable image" in err
    assert "--skip-bad-images" in err and "Traceback" not in err
    assert sorted(p.name for p in (cache / "images").iterdir() if p.is_dir()) == images_before  # no partial cache
    stage_files = [p for p in (cache / "runs").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert _half_written(cache) == [] and stage_files == []  # no stage wrote anything


def test_image_cache_skips_bad_files_only_when_asked(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    records = []
    for i, colour in enumerate(colours):
        path = tmp_path / "data" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 8), colour).save(path)
        records.append(Record(str(path), pid=i, cam=1, modality="visible"))
    Path(records[1].path).write_bytes(b"garbage")  # undecodable
    Path(records[3].path).unlink()  # unreadable (missing)
    with pytest.raises(DatasetError, match=f"{records[3].path}: cannot read the image file"):
        ImageCache.build(records, (8, 4), tmp_path / "cache", progress=False)
    with pytest.raises(DatasetError, match=f"{records[1].path}: not a readable image"):
        ImageCache.build(records[:3], (8, 4), tmp_path / "cache", progress=False)
    assert [p for p in (tmp_path / "cache" / "images").iterdir() if p.is_dir()] == []  # nothing half-built

    cache = ImageCache.build(records, (8, 4), tmp_path / "cache", progress=False, skip_bad=True)
    assert cache.records == [records[0], records[2]] and len(cache.array) == 2
    assert (cache[0] == colours[0]).all() and (cache[1] == colours[2]).all()  # rows stay aligned
    assert [(e["index"], e["path"]) for e in cache.skipped] == [(1, records[1].path), (3, records[3].path)]
    assert "cannot read the image file" in cache.skipped[1]["reason"]
    assert json.loads((cache.directory / "skipped.json").read_text()) == cache.skipped
    assert (
        ImageCache.build(records, (8, 4), tmp_path / "cache", progress=False, skip_bad=True).directory
        == cache.directory
    )
    ImageCache.build(records[:3], (8, 4), tmp_path / "cache", progress=False, skip_bad=True)
    with pytest.raises(DatasetError, match=r"1.png: not a readable image .*1 unreadable image\(s\) in all"):
        ImageCache.build(records[:3], (8, 4), tmp_path / "cache", progress=False)  # the same key, not skipping
    with pytest.raises(DatasetError, match="none of the 2 images could be read"):
        ImageCache.build([records[1], records[3]], (8, 4), tmp_path / "cache", progress=False, skip_bad=True)
    assert _half_written(tmp_path / "cache") == []


def test_skip_bad_images_trains_without_them_and_writes_the_list(reference: Path, tmp_path: Path, capsys) -> None:
    cache = _copy(reference, tmp_path / "cache", stages=())
    bad = _break_two_training_images(cache)
    assert main([*_train_args(cache, tmp_path / "reports"), "--skip-bad-images"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable training image(s)" in err
    (report_file,) = (tmp_path / "reports").glob("*/results.json")  # the run folder of this command
    report = json.loads(report_file.read_text())
    assert [entry["path"] for entry in report["skipped_images"]] == bad
    assert "not a readable image" in report["skipped_images"][0]["reason"]
    (listed,) = list((cache / "images").glob("*/skipped.json"))
    assert [entry["path"] for entry in json.loads(listed.read_text())] == bad

    # the cache holds the other images only; the stages trained on them (all identities kept)
    smoke = get_profile("smoke")
    experiment = Experiment(dataclasses.replace(smoke, skip_bad_images=True), cache, progress=False)
    assert len(experiment.train_cache) == len(experiment.train_records) - 2
    assert not {r.path for r in experiment.train_cache.records} & set(bad)
    assert (cache / "runs" / f"stage3-{experiment.stage3_key}" / DONE).is_file()
    # without skipping, the same cache reports the images it left out
    with pytest.raises(ValueError, match="not a readable image .*2 unreadable image"):
        Experiment(smoke, cache, progress=False).train_cache  # noqa: B018


# -- foreign checkpoints ------------------------------------------------------------------------------


def _plant_stage1_checkpoint(reference: Path, experiment: Experiment) -> Path:
    """Put the reference run's stage-1 checkpoint where ``experiment`` will look for its own."""
    run = experiment.cache_root / "runs" / f"stage1-{experiment.stage1_key}"
    source = latest_checkpoint(_run_dir(reference, "stage1"))
    shutil.copytree(source.parent, run / "checkpoints")
    return run / "checkpoints" / source.name


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change", ["dataset", "architecture", "version"])
def test_foreign_checkpoint_fails_with_a_clear_error_and_is_left_alone(
    reference: Path, tmp_path: Path, change: str
) -> None:
    cache = _copy(reference, tmp_path / "cache", stages=())
    smoke = get_profile("smoke")
    if change == "dataset":  # the val_id identities join training: 12 identities instead of 8
        cfg = dataclasses.replace(smoke, data=dataclasses.replace(smoke.data, hold_out_val=False), validate_every=0)
        expected = r"num_ids=8 but this run needs num_ids=12 \(a checkpoint of another dataset or split"
    elif change == "architecture":
        cfg = dataclasses.replace(smoke, clip=dataclasses.replace(smoke.clip, arch="csdn-tiny-vit", weights="random"))
        expected = r"arch='csdn-tiny-rn' but this run needs arch='csdn-tiny-vit' \(a checkpoint of another architecture"
    else:
        cfg = smoke
        expected = rf"written by csdn 0\.0\.0-old, this is {__version__}"
    experiment = Experiment(cfg, cache, progress=False)
    planted = _plant_stage1_checkpoint(reference, experiment)
    if change == "version":
        meta = json.loads((planted / "meta.json").read_text())
        (planted / "meta.json").write_text(json.dumps({**meta, "version": "0.0.0-old"}))
    before = _snapshot(planted.parent)
    with pytest.raises(CheckpointError, match=expected):
        experiment.prompts  # noqa: B018  - resuming stage 1 meets the foreign checkpoint
    assert _snapshot(planted.parent) == before  # nothing deleted or overwritten
    assert not (planted.parent.parent / DONE).exists()


def test_checkpoints_load_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path, 1, model, {"step": torch.tensor(1)}, {"arch": "linear"})

    class Payload:  # anything unpickling would construct: refused, never executed
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"step": Payload()}, path / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"train_state\.pt: cannot be loaded as a weights-only training state"):
        load_checkpoint(path, torch.nn.Linear(3, 2))

    path = save_checkpoint(tmp_path, 2, model, {"step": torch.tensor(2)}, {"arch": "linear"})
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:20])
    fresh = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable weights"):
        load_checkpoint(path, fresh)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())  # nothing half-loaded


def test_package_loads_torch_files_weights_only() -> None:
    """Every ``torch.load`` call in the package passes ``weights_only=True`` (weights otherwise: safetensors)."""
    package = Path(csdn.__file__).parent
    calls = []
    for source in package.rglob("*.py"):
        text = source.read_text()
        start = text.find("torch.load(")
        while start >= 0:
            end, depth = start + len("torch.load("), 1
            while depth:  # to the matching parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append(text[start:end])
            start = text.find("torch.load(", end)
    assert len(calls) >= 2, calls  # the checkpoint loader and the CLIP weights loader
    assert all("weights_only=True" in call for call in calls), calls
