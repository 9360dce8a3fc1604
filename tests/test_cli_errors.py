"""Ordinary mistakes and mishaps give one clear line (``csdn: error: ...``, exit 2), never a traceback.

The cases live in ``tests/bad_inputs.py`` (``python tests/bad_inputs.py`` prints their counts); here each
must be a clear error, and the ones that could lose or half-write something are checked for that too.
Read-only folders are simulated by monkeypatching (the tests run as root, for whom chmod changes nothing).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from bad_inputs import CASES, World, make_warm_cache, outcome, read_only, summary

from csdn.artifacts import atomic_save_tensors, atomic_write_json, build_once, check_folder, storage_error
from csdn.cli import main
from csdn.errors import StorageError
from csdn.train.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A smoke cache with every stage done (never changed: cases work on copies)."""
    return make_warm_cache(tmp_path_factory.mktemp("warm"))


def _half_written(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".part")) or p.name.startswith(".epoch_")]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_line(name: str, warm: Path, tmp_path: Path, monkeypatch) -> None:
    world = World(tmp_path, warm, monkeypatch)
    kind, seen = outcome(CASES[name], world)
    assert kind == "clear", seen
    monkeypatch.undo()
    if world.cache_root.is_dir():
        assert _half_written(world.cache_root) == []


def test_an_unreadable_query_image_stops_the_run_before_any_training(warm: Path, tmp_path: Path, monkeypatch) -> None:
    world = World(tmp_path, warm, monkeypatch)
    assert outcome(CASES["query image unreadable (found before training)"], world)[0] == "clear"
    assert not [p for p in (world.cache_root / "runs").rglob("*") if p.is_file()]  # no stage started


def test_a_full_disk_keeps_the_last_checkpoint(warm: Path, tmp_path: Path, monkeypatch) -> None:
    world = World(tmp_path, warm, monkeypatch)
    assert outcome(CASES["disk full saving a checkpoint (torch: unexpected pos)"], world)[0] == "clear"
    run = world.run(world.cache_root, "stage3")
    assert latest_checkpoint(run) is None and not (run / "done.json").exists()  # epoch 1 never pointed at
    assert not (tmp_path / "reports" / "smoke").exists()


def test_synth_out_leaves_an_existing_folder_alone(warm: Path, tmp_path: Path, monkeypatch) -> None:
    assert outcome(CASES["synth --out on an existing folder"], World(tmp_path, warm, monkeypatch))[0] == "clear"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_a_warm_cache_on_a_read_only_mount_evaluates_without_writing(warm: Path, tmp_path: Path, monkeypatch) -> None:
    cache = World(tmp_path, warm, monkeypatch).cache()
    read_only(monkeypatch, cache)  # every write under the cache fails: no lock, no temporary file, no folder
    assert main(["--cache", str(cache), "eval", "--profile", "smoke", "--reports", str(tmp_path / "reports")]) == 0
    assert len(list((tmp_path / "reports").glob("*/results.json"))) == 1  # the run folder's report


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_cache_writes_get_the_permissions_of_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
        atomic_save_tensors({"t": torch.zeros(2)}, tmp_path / "a" / "t.safetensors")
        built = build_once(tmp_path / "b", lambda tmp: (tmp / "y.txt").write_text("y"))
        checkpoint = save_checkpoint(tmp_path / "run", 1, torch.nn.Linear(2, 2), {}, {})
    finally:
        os.umask(old)
    files = [tmp_path / "a" / "x.json", tmp_path / "a" / "t.safetensors", checkpoint / "meta.json"]
    files.append(checkpoint.parent / "latest.json")
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    for path in (built, checkpoint):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask, path


@pytest.mark.parametrize("content", ["{}", "[]", "null", '{"dir": "../../elsewhere"}', "not json"])
def test_a_garbage_latest_json_names_the_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text(content)
    with pytest.raises(CheckpointError, match=r"checkpoints/latest.json: .*delete"):
        latest_checkpoint(tmp_path)


def test_storage_errors_are_recognised_and_bugs_are_not(tmp_path: Path) -> None:
    full = storage_error(OSError(errno.ENOSPC, "No space left on device", "/x/y"), tmp_path)
    assert isinstance(full, StorageError) and str(full).startswith("cannot write /x/y: no space left")
    torch_short_write = storage_error(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"), "f")
    assert torch_short_write is not None and torch_short_write.errno == errno.ENOSPC
    assert storage_error(OSError(errno.EIO, "Input/output error"), "f") is None  # not the user's to fix
    assert storage_error(RuntimeError("size mismatch"), "f") is None
    assert storage_error(ValueError("No space left on device"), "f") is None  # only I/O error types


def test_check_folder_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    check_folder(tmp_path / "new" / "reports", "--reports folder")
    assert list(tmp_path.iterdir()) == []
    read_only(monkeypatch, tmp_path, errno.EROFS)
    with pytest.raises(StorageError, match=r"--reports folder .*/new/reports: the file system is read-only"):
        check_folder(tmp_path / "new" / "reports", "--reports folder")
    check_folder(tmp_path, "artifact cache", writable=False)  # a read-only cache may still be read


def test_a_failed_build_in_a_full_cache_is_a_storage_error(tmp_path: Path) -> None:
    def produce(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "big.npy"))

    with pytest.raises(StorageError, match=r"cannot write .*big.npy: no space left"):
        build_once(tmp_path / "artifact", produce)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.lock"]  # no half-built artifact
    with pytest.raises(ZeroDivisionError):  # a bug keeps its own exception
        build_once(tmp_path / "artifact", lambda tmp: 1 / 0)
    assert (build_once(tmp_path / "artifact", lambda tmp: None) / ".complete").is_file()  # later builds work


# -- issue 23 ------------------------------------------------------------------------------------------


def test_the_readme_counts_every_case() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    expected = summary({"clear": len(CASES), "silent": 0, "traceback": 0, "unclear": 0})
    assert expected in " ".join(readme.split()), expected


def test_the_users_folder_is_left_as_it_was(warm: Path, tmp_path: Path, monkeypatch) -> None:
    assert outcome(CASES["eval --out into the user's own folder"], World(tmp_path, warm, monkeypatch))[0] == "clear"
    mine = tmp_path / "mine"
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "log.txt", "results.md"]
    assert all(p.read_text() == f"the user's own {p.name}\n" for p in mine.iterdir())


def test_a_failed_command_leaves_the_results_and_provenance_as_they_were(warm: Path, tmp_path: Path, monkeypatch):
    world = World(tmp_path, warm, monkeypatch)
    cache, out = world.cache(), tmp_path / "out"
    assert main(world.train(cache, "--out", str(out))) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".md")}
    (world.run(cache, "stage3") / "final.safetensors").write_bytes(b"truncated")  # the same run fails on load
    assert main(world.train(cache, "--out", str(out), command="eval")) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".md")} == before
    assert "stopped: CacheError" in (out / "log.txt").read_text()


def test_eval_of_given_weights_gets_a_folder_named_after_them(warm: Path, tmp_path: Path, monkeypatch) -> None:
    world = World(tmp_path, warm, monkeypatch)
    cache = world.cache()
    final = world.run(cache, "stage3") / "final.safetensors"
    assert main(world.train(cache, "--weights", str(final), command="eval")) == 0
    assert main(world.train(cache, "--run", str(final.parent), command="eval")) == 0  # the same weights
    (folder,) = (tmp_path / "reports").iterdir()
    assert folder.name.startswith("smoke-csdn-seed0-weights-") and (folder / "results.json").is_file()
    version = json.loads((folder / "version.json").read_text())
    assert version["command"].endswith(f"--run {final.parent}")  # the command of the results beside it


@pytest.mark.parametrize(
    "name",
    ["decompression bomb among the training images", "--workers -1", "read-only tensorboard/ in the run folder"],
)
def test_found_before_any_training_or_pretraining(name: str, warm: Path, tmp_path: Path, monkeypatch) -> None:
    world = World(tmp_path, warm, monkeypatch)
    assert outcome(CASES[name], world)[0] == "clear"
    monkeypatch.undo()
    started = {p.name for p in world.cache_root.glob("runs/*")} - {p.name for p in warm.glob("runs/*")}
    assert started == set()  # no stage (nor the tiny CLIP's pretraining) started
    if name.startswith("decompression bomb"):  # its cache has no tiny CLIP: found before its pretraining
        assert not list(world.cache_root.glob("tiny_clip/*/.complete"))


def test_sigterm_is_logged_and_the_same_command_resumes(warm: Path, tmp_path: Path, monkeypatch) -> None:
    world = World(tmp_path, warm, monkeypatch)
    assert outcome(CASES["SIGTERM"], world)[0] == "clear"
    assert "stopped: Terminated: terminated by SIGTERM" in (tmp_path / "out" / "log.txt").read_text()
    monkeypatch.undo()
    assert main(world.train(world.cache_root, "--out", str(tmp_path / "out"))) == 0


def test_stages_and_features_of_a_csdn_without_checksums_are_rewritten(
    warm: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from safetensors.torch import save_file

    from csdn.artifacts import lacks_checksum, load_tensors

    cache = World(tmp_path, warm, monkeypatch).cache()
    old = [*cache.glob("runs/stage*-*/final.safetensors"), *cache.glob("features/clip-*.safetensors")]
    for path in old:  # as a csdn without checksums wrote them
        save_file(load_tensors(path, ""), path)
    capsys.readouterr()
    assert main(["--cache", str(cache), "train", "--profile", "smoke", "--reports", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert err.count("was written by a csdn without checksums") == len(old)
    assert not any(lacks_checksum(path) for path in old)


def test_the_folder_of_a_run_that_never_finished_is_taken_over(warm: Path, tmp_path: Path, monkeypatch) -> None:
    world = World(tmp_path, warm, monkeypatch)
    cache, out = world.cache(), tmp_path / "out"
    wrong = ["--cache", str(cache), "train", "--profile", "sysu-rn50", "--data", str(tmp_path / "nowhere")]
    assert main([*wrong, "--out", str(out)]) == 2  # claimed, then stopped: the dataset is not there
    assert main(world.train(cache, "--out", str(out))) == 0
    assert json.loads((out / "config.json").read_text())["name"] == "smoke"
