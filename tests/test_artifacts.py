"""The artifact cache: complete-or-absent directories, one producer under concurrency."""

import json
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

from csdn.artifacts import atomic_save_tensors, atomic_write_json, build_once, config_key, is_complete


def test_build_once_produces_then_reuses(tmp_path: Path) -> None:
    calls = []

    def produce(d: Path) -> None:
        calls.append(d)
        (d / "value.txt").write_text("42")

    target = tmp_path / "kind" / "abc"
    assert build_once(target, produce) == target
    assert build_once(target, produce) == target
    assert len(calls) == 1
    assert (target / "value.txt").read_text() == "42"
    assert is_complete(target)


def test_failed_producer_leaves_nothing(tmp_path: Path) -> None:
    def produce(d: Path) -> None:
        (d / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    target = tmp_path / "kind" / "abc"
    with pytest.raises(RuntimeError, match="boom"):
        build_once(target, produce)
    assert not target.exists()
    leftovers = [p for p in target.parent.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_incomplete_directory_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / "abc"
    target.mkdir()
    (target / "stale.txt").write_text("from an interrupted run")
    build_once(target, lambda d: (d / "fresh.txt").write_text("ok"))
    assert not (target / "stale.txt").exists()
    assert (target / "fresh.txt").read_text() == "ok"


def test_concurrent_callers_compute_once(tmp_path: Path) -> None:
    calls = []
    gate = threading.Event()

    def produce(d: Path) -> None:
        calls.append(1)
        gate.wait(0.2)
        (d / "v").write_text("x")

    target = tmp_path / "shared"
    threads = [threading.Thread(target=build_once, args=(target, produce)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (target / "v").read_text() == "x"


def test_config_key_is_stable_and_order_free() -> None:
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_atomic_write_json_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"k": 1})
    assert json.loads(path.read_text()) == {"k": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_atomic_save_tensors_roundtrip_of_non_contiguous_tensors(tmp_path: Path) -> None:
    weights = {"w": torch.arange(6.0).view(2, 3).t(), "b": torch.ones(2, requires_grad=True)}
    atomic_save_tensors(weights, tmp_path / "sub" / "w.safetensors")
    loaded = load_file(str(tmp_path / "sub" / "w.safetensors"))
    assert torch.equal(loaded["w"], weights["w"]) and torch.equal(loaded["b"], torch.ones(2))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["w.safetensors"]


def test_atomic_save_tensors_failure_leaves_no_temp_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "w.safetensors"
    atomic_save_tensors({"w": torch.zeros(3)}, target)

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")  # a save that dies part-way
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    for path in (target, tmp_path / "new.safetensors"):
        with pytest.raises(OSError, match="disk full"):
            atomic_save_tensors({"w": torch.ones(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file, no half-written target
    assert torch.equal(load_file(str(target))["w"], torch.zeros(3))


def test_saved_tensors_carry_a_checksum_that_catches_a_flipped_byte(tmp_path: Path) -> None:
    from csdn.artifacts import load_tensors
    from csdn.errors import CacheError

    path = tmp_path / "w.safetensors"
    atomic_save_tensors({"a": torch.arange(6.0), "b": torch.ones(2, dtype=torch.bfloat16)}, path)
    assert torch.equal(load_tensors(path, "fix")["a"], torch.arange(6.0))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"w.safetensors: damaged .*; delete it"):
        load_tensors(path, "delete it")


def test_a_file_without_a_checksum_is_refused_unless_it_is_not_ours(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from csdn.artifacts import lacks_checksum, load_tensors
    from csdn.errors import CacheError

    save_file({"a": torch.zeros(2)}, tmp_path / "old.safetensors")  # as a csdn without checksums wrote it
    assert lacks_checksum(tmp_path / "old.safetensors") and not lacks_checksum(tmp_path / "missing.safetensors")
    with pytest.raises(CacheError, match=r"old.safetensors: no checksum .*; rebuild"):
        load_tensors(tmp_path / "old.safetensors", "rebuild")
    assert torch.equal(load_tensors(tmp_path / "old.safetensors", "", checksum=False)["a"], torch.zeros(2))


def test_build_once_checksums_the_files_it_is_told_and_verify_names_a_damaged_one(tmp_path: Path) -> None:
    from csdn.artifacts import stored_checksums, verify_artifact
    from csdn.errors import CacheError

    target = build_once(tmp_path / "a", lambda tmp: (tmp / "x.bin").write_bytes(b"abc"), checksummed=("x.bin",))
    assert set(stored_checksums(target)) == {"x.bin"}
    verify_artifact(target)
    (target / "x.bin").write_bytes(b"abd")
    with pytest.raises(CacheError, match=r"a/x.bin: damaged .*delete the folder .*/a to build it again"):
        verify_artifact(target)
