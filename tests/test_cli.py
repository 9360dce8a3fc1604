"""The csdn console script: commands run on the smoke profile; bad input gives a clear one-line error."""

import json
from pathlib import Path

import pytest

from csdn.cli import main


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
    code = main(["--cache", str(tmp_path / "cache"), "demo", "--profile", "smoke", "--reports", str(reports)])
    assert code == 0
    out = capsys.readouterr().out
    assert "zero-shot CLIP" in out and "SYSU-MM01 at " in out
    summary = json.loads((reports / "smoke" / "results.json").read_text())["summary"]
    assert {(row["model"], row["protocol"]) for row in summary} == {
        ("csdn", "all 1-shot"), ("csdn", "indoor 1-shot"),
        ("zero-shot CLIP", "all 1-shot"), ("zero-shot CLIP", "indoor 1-shot"),
        ("attribute oracle (ceiling)", "all 1-shot"), ("attribute oracle (ceiling)", "indoor 1-shot")}
    assert all(0 <= row["mAP"] <= 100 for row in summary)
    oracle = [row for row in summary if row["model"].startswith("attribute oracle")]
    assert all(row["mAP"] > 50 for row in oracle)  # the world is solvable from invariant attributes
    assert (reports / "smoke" / "cmc_all_1_shot.png").stat().st_size > 0
