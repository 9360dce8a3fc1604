"""The artifact cache: complete-or-absent directories, one producer under concurrency."""

import json
import threading
from pathlib import Path

import pytest

from csdn.artifacts import atomic_write_json, build_once, config_key, is_complete


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
