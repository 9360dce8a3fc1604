"""A dry run (``--dry-run N``, ``stage*.max_steps``, ``eval.max_images``): capped, marked, never cached as finished."""

import json
from pathlib import Path

import pytest
import torch

from csdn.cli import main
from csdn.config import get_profile
from csdn.data.protocol import EvalSplit, GalleryRules
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.dryrun import capped_split, dry_run_overrides, is_dry_run
from csdn.experiment import Experiment
from csdn.overrides import override

FLAGS = ["--profile", "smoke", "--clip", "random"]  # CSDN on a random tiny CLIP: no pretraining


def test_dry_run_trains_each_stage_n_steps_marks_the_report_and_caches_no_stage(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    steps: list[int] = []
    original = torch.optim.Adam.step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    cache, reports = tmp_path / "cache", tmp_path / "reports"
    assert main(["--cache", str(cache), "train", *FLAGS, "--dry-run", "2", "--reports", str(reports)]) == 0
    assert len(steps) == 3 * 2  # stages 1, 2 (official SII) and 3, two steps each
    assert "DRY RUN (stage1 1 epoch(s) x 2 steps" in capsys.readouterr().out
    (folder,) = reports.iterdir()
    assert (folder / "results.md").read_text().startswith("Run: DRY RUN (")
    report = json.loads((folder / "results.json").read_text())
    assert report["dry_run"].startswith("DRY RUN") and all(len(h) == 1 for h in report["histories"].values())
    assert sorted(p.name.split("-")[0] for p in (cache / "dry-runs").iterdir()) == ["stage1", "stage2", "stage3"]
    assert not list(cache.glob("**/done.json"))  # no stage cached as finished
    real = Experiment(override(get_profile("smoke"), {"clip.weights": "random"}), cache, progress=False)
    assert not real.is_trained


def test_the_caps_enter_the_keys_only_when_set() -> None:
    smoke = get_profile("smoke")
    dry = override(smoke, dry_run_overrides(3))
    assert is_dry_run(dry) and not is_dry_run(smoke)
    assert is_dry_run(override(smoke, {"stage3.max_steps": 1}))
    unchanged = override(smoke, {"stage3.max_steps": 0, "stage1.max_steps": 0, "eval.max_images": 0})
    assert Experiment(unchanged, Path("/nonexistent")).stage3_key == Experiment(smoke, Path("/nonexistent")).stage3_key


def _record(pid: int, modality: str, k: int) -> Record:
    return Record(f"/x/{modality}/{pid}/{k}.jpg", pid, 1 if modality == VISIBLE else 3, modality)


def test_capped_split_keeps_spread_queries_and_their_matches_first() -> None:
    query = tuple(_record(pid, INFRARED, k) for pid in range(10) for k in range(2))
    gallery = [_record(pid, VISIBLE, 0) for pid in range(10)]
    split = EvalSplit("ir->vis", "t", query, lambda trial: gallery, (0, 1), GalleryRules())
    capped = capped_split(split, 4)
    assert [r.pid for r in capped.query] == [0, 2, 5, 7] and capped.trials == (0, 1)
    assert [r.pid for r in capped.gallery(1)] == [0, 2, 5, 7]
    assert capped_split(split, 0) is split and capped_split(split, 100) is split


@pytest.mark.parametrize(("argv", "message"), [(["--dry-run", "0"], "--dry-run takes a number of steps >= 1")])
def test_bad_dry_run_is_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    assert main(["--cache", str(tmp_path), "train", *FLAGS, *argv, "--reports", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"csdn: error: {message}, got 0"]
