"""Ordinary mistakes and mishaps give one clear line (``csdn: error: ...``, exit 2), never a traceback.

The cases live in ``tests/bad_inputs.py`` (``python tests/bad_inputs.py`` prints their counts); here each
must be a clear error, and the ones that could lose or half-write something are checked for that too.
Read-only folders are simulated by monkeypatching (the tests run as root, for whom chmod changes nothing).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from bad_inputs import CASES, World, make_warm_cache, outcome, read_only

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
