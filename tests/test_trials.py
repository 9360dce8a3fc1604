"""``--trial all``: every RegDB trial's model, a table of each, the mean and sd in both directions.

End to end on the smoke SynthVI world written in the RegDB layout (its ``regdb_trials`` is 2, so two
trials), CSDN on a random tiny CLIP (no tiny-CLIP pretraining) with the smoke schedule.
"""

import contextlib
import json
from pathlib import Path

import pandas as pd
import pytest

from csdn.cli import main
from csdn.trials import summarize_trials

FLAGS = ["--profile", "smoke", "--clip", "random", "--set", "data.synth_layout=regdb", "--set", "validate_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(cache, run folder) of ``csdn train --trial all``."""
    cache, reports = tmp_path_factory.mktemp("trials-cache"), tmp_path_factory.mktemp("trials-reports")
    assert main(["--cache", str(cache), "train", *FLAGS, "--trial", "all", "--reports", str(reports)]) == 0
    (folder,) = reports.iterdir()
    return cache, folder


def test_train_all_trials_reports_each_trial_and_mean_and_sd_both_ways(trained: tuple[Path, Path]) -> None:
    cache, folder = trained
    assert folder.name.endswith("-trials")
    report = json.loads((folder / "results.json").read_text())
    per_trial = pd.DataFrame(report["per_trial"])
    assert sorted(set(zip(per_trial.trial, per_trial.direction))) == [
        (t, d) for t in (1, 2) for d in ("infrared->visible", "visible->infrared")
    ]
    assert per_trial[["R1", "mAP", "mINP"]].gt(0).all().all()
    summary = pd.DataFrame(report["summary"]).set_index("direction")
    for direction, rows in per_trial.groupby("direction"):
        assert summary.loc[direction, "trials"] == 2
        assert summary.loc[direction, "mAP mean"] == pytest.approx(rows.mAP.mean())
        assert summary.loc[direction, "mAP std"] == pytest.approx(abs(rows.mAP.iloc[0] - rows.mAP.iloc[1]) / 2**0.5)
    keys = report["stage3_keys"]
    assert len(set(keys.values())) == 2  # each trial its own model, cached as its own stage
    assert all((cache / "runs" / f"stage3-{k}" / "done.json").is_file() for k in keys.values())
    text = (folder / "trials.md").read_text()
    assert "## infrared->visible" in text and "| mean" in text and "| std" in text


def test_eval_all_trials_in_two_jobs_and_a_rerun_load_the_same_models(trained: tuple[Path, Path], tmp_path) -> None:
    cache, folder = trained
    expected = json.loads((folder / "results.json").read_text())["per_trial"]
    argv = ["--cache", str(cache), "eval", *FLAGS, "--trial", "all", "--jobs", "2", "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "e" / "results.json").read_text())["per_trial"] == expected
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("runs/*/final.safetensors")}
    assert main(["--cache", str(cache), "train", *FLAGS, "--trial", "all", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "results.json").read_text())["per_trial"] == expected
    assert stamps == {p: p.stat().st_mtime_ns for p in cache.glob("runs/*/final.safetensors")}  # nothing retrained


def test_summary_is_the_mean_and_sample_sd_over_trials() -> None:
    rows = pd.DataFrame(
        [{"trial": t, "direction": "a", "R1": r, "R10": 0, "R20": 0, "mAP": r, "mINP": 0} for t, r in ((1, 1), (2, 3))]
    )
    summary = summarize_trials(rows).set_index("direction")
    assert summary.loc["a", "R1 mean"] == 2 and summary.loc["a", "R1 std"] == pytest.approx(2**0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--profile", "smoke", "--trial", "all"], "--trial all runs RegDB's trials, but the data is synthvi"),
        (["train", *FLAGS, "--jobs", "2"], "--jobs trains RegDB trials in parallel: it goes with --trial all"),
        (["demo", "--profile", "smoke", "--trial", "all"], "use csdn train (or eval) --trial all"),
        (["train", *FLAGS, "--trial", "x"], None),
    ],
)
def test_bad_trial_arguments_are_refused(tmp_path: Path, capsys, argv: list[str], message: str | None) -> None:
    with pytest.raises(SystemExit) if message is None else contextlib.nullcontext():
        code = main(["--cache", str(tmp_path / "c"), *argv, "--reports", str(tmp_path / "r")])
        assert code == 2
    err = capsys.readouterr().err
    assert (message or "a trial number (1..10) or all, not 'x'") in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()
