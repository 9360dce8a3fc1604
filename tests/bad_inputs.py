"""Bad-input cases of the ``csdn`` CLI: each sets up one ordinary mistake or mishap and says what the user must see.

``tests/test_cli_errors.py`` asserts every case; run this file to print the counts
(``python tests/bad_inputs.py``): cases, clear errors, silent wrong results (exit 0 although the input
was bad), raw tracebacks, and other outcomes (an error line that does not name what it should).

A case runs ``csdn.cli.main`` in this process on a copy of a warm smoke cache (every stage done),
changes one thing first (a file truncated, a folder made read-only by monkeypatching, since tests run
as root, ...) and expects exit status 2 (130 for Ctrl-C) with one line ``csdn: ...`` containing
``expect``, usually the name of the file at fault.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from csdn.cli import main

STAGES = ("stage1", "stage2", "stage3")
ERROR_LINE = re.compile(r"csdn: (?:error|interrupted)[^\n\r]*")


def make_warm_cache(root: Path) -> Path:
    """A smoke cache with every stage trained and every test image cached (``csdn train --profile smoke``)."""
    cache = Path(root) / "cache"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        code = main(["--cache", str(cache), "train", "--profile", "smoke", "--reports", str(Path(root) / "reports")])
    assert code == 0, "the warm smoke cache could not be trained"
    return cache


@dataclass
class World:
    """What a case's setup works with: a scratch folder, the warm cache (read only), a monkeypatch."""

    tmp: Path
    warm: Path
    mp: pytest.MonkeyPatch

    def cache(self, stages: tuple[str, ...] = STAGES, features: bool = True) -> Path:
        """A copy of the warm cache holding the runs of ``stages`` only (and the CLIP features or not)."""
        dst = self.tmp / "cache"
        shutil.copytree(self.warm, dst, ignore=shutil.ignore_patterns("runs", *(() if features else ("features",))))
        for run in (self.warm / "runs").glob("stage*-*"):
            if run.is_dir() and run.name.split("-")[0] in stages:
                shutil.copytree(run, dst / "runs" / run.name)
        return dst

    @property
    def cache_root(self) -> Path:
        return self.tmp / "cache"

    def run(self, cache: Path, stage: str) -> Path:
        """The run folder of ``stage`` in ``cache`` (named as in the warm cache)."""
        name = _one(p for p in (self.warm / "runs").glob(f"{stage}-*") if p.is_dir()).name
        return cache / "runs" / name

    def train(self, cache: Path, *extra: str, command: str = "train") -> list[str]:
        return ["--cache", str(cache), command, "--profile", "smoke", "--reports", str(self.tmp / "reports"), *extra]


def read_only(mp: pytest.MonkeyPatch, root: Path, code: int = errno.EROFS) -> None:
    """Make every write under ``root`` fail with ``code`` (EROFS: a read-only mount), reads still work."""
    root = Path(root).absolute()
    real_open, real_mkdir, real_io_open = os.open, os.mkdir, io.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(os.path.abspath(path)).is_relative_to(root)

    def deny(path) -> None:
        if inside(path):
            raise OSError(code, os.strerror(code), str(path))

    def fake_open(path, flags, *args, **kwargs):
        if flags & writes:
            deny(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if not os.path.exists(path):  # mkdir of an existing folder: EEXIST, as on a read-only mount
            deny(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_io_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            deny(file)
        return real_io_open(file, mode, *args, **kwargs)

    def guard(real):
        def fake(path, *args, **kwargs):
            deny(path)
            return real(path, *args, **kwargs)

        return fake

    mp.setattr(os, "open", fake_open)
    mp.setattr(os, "mkdir", fake_mkdir)
    mp.setattr(io, "open", fake_io_open)
    mp.setattr(builtins, "open", fake_io_open)
    for name in ("replace", "rename", "unlink", "rmdir", "chmod"):
        mp.setattr(os, name, guard(getattr(os, name)))


def _truncate(path: Path, keep: int = 24) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _one(paths) -> Path:
    (path,) = list(paths)
    return path


def _synthvi(cache: Path) -> Path:
    return _one(p for p in (cache / "synthvi").iterdir() if p.is_dir())


# -- the cases: setup(world) -> argv ------------------------------------------------------------------


def cache_is_a_file(w: World) -> list[str]:
    (w.tmp / "file").write_text("x")
    return ["--cache", str(w.tmp / "file"), "stats", "--profile", "smoke"]


def reports_is_a_file(w: World) -> list[str]:
    cache = w.cache()
    (w.tmp / "reports").write_text("x")
    return w.train(cache)


def reports_read_only(w: World) -> list[str]:
    cache = w.cache()
    (w.tmp / "reports").mkdir()
    read_only(w.mp, w.tmp / "reports", errno.EACCES)
    return w.train(cache)


def cache_read_only_stage_missing(w: World) -> list[str]:
    cache = w.cache(stages=("stage1", "stage2"))
    read_only(w.mp, cache)
    return w.train(cache)


def disk_full_checkpoint(w: World) -> list[str]:
    import torch

    cache, real_save = w.cache(stages=("stage1", "stage2")), torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("train_state.pt"):  # what torch raises when the disk fills mid-save
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *args, **kwargs)

    w.mp.setattr(torch, "save", save)
    return w.train(cache)


def disk_full_features(w: World) -> list[str]:
    import safetensors.torch
    from safetensors import SafetensorError

    cache = w.cache(stages=(), features=False)

    def save_file(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    w.mp.setattr(safetensors.torch, "save_file", save_file)
    return w.train(cache)


def disk_full_image_cache(w: World) -> list[str]:
    cache = w.cache()
    shutil.rmtree(cache / "images")

    def posix_fallocate(fd: int, offset: int, length: int) -> None:  # the array's space is reserved up front
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    w.mp.setattr(os, "posix_fallocate", posix_fallocate, raising=False)
    return w.train(cache, command="eval")


def latest_json_empty(w: World) -> list[str]:
    cache = w.cache(stages=("stage1", "stage2"))
    (w.run(cache, "stage3") / "checkpoints").mkdir(parents=True)
    (w.run(cache, "stage3") / "checkpoints" / "latest.json").write_text("{}")
    return w.train(cache)


def latest_json_garbage(w: World) -> list[str]:
    cache = w.cache(stages=("stage1", "stage2"))
    (w.run(cache, "stage3") / "checkpoints").mkdir(parents=True)
    (w.run(cache, "stage3") / "checkpoints" / "latest.json").write_bytes(b"\x89PNG\x00\xff garbage")
    return w.train(cache)


def done_json_garbage(w: World) -> list[str]:
    cache = w.cache()
    (w.run(cache, "stage2") / "done.json").write_text('{"history": ')
    return w.train(cache)  # stage 2 is read on the way to stage 3 (csdn eval reads stage 3 only)


def final_truncated(w: World) -> list[str]:
    cache = w.cache()
    _truncate(w.run(cache, "stage3") / "final.safetensors")
    return w.train(cache, command="eval")


def features_truncated(w: World) -> list[str]:
    cache = w.cache(stages=())
    _truncate(_one((cache / "features").glob("clip-*.safetensors")), keep=200)
    return w.train(cache)


def images_npy_truncated(w: World) -> list[str]:
    cache = w.cache()
    for array in (cache / "images").glob("*/images.npy"):
        _truncate(array, keep=array.stat().st_size // 2)
    return w.train(cache, command="eval")


def test_id_binary(w: World) -> list[str]:
    cache = w.cache()
    (_synthvi(cache) / "exp" / "test_id.txt").write_bytes(b"\xff\xfe\x00\x01\x9c")
    return w.train(cache, command="eval")


def query_image_unreadable(w: World) -> list[str]:
    cache, root = w.cache(stages=()), _synthvi(w.cache_root)
    test_ids = [int(t) for t in (root / "exp" / "test_id.txt").read_text().split(",")]
    queries = sorted(p for i in test_ids for cam in ("cam3", "cam6") for p in (root / cam / f"{i:04d}").glob("*"))
    queries[0].write_bytes(b"not an image")  # an infrared test image: a query of every SYSU protocol
    return w.train(cache)


def data_folder_missing(w: World) -> list[str]:
    return ["--cache", str(w.tmp / "cache"), "train", "--profile", "sysu-rn50", "--data", str(w.tmp / "nowhere")]


def stats_real_profile_data(w: World) -> list[str]:
    (w.tmp / "sysu").mkdir()
    return ["--cache", str(w.tmp / "cache"), "stats", "--profile", "sysu-rn50", "--data", str(w.tmp / "sysu")]


def clip_folder_without_local_dir(w: World) -> list[str]:
    (w.tmp / "clipdir").mkdir()
    return w.train(w.cache(), "--clip", str(w.tmp / "clipdir"))


def seed_negative(w: World) -> list[str]:
    return w.train(w.tmp / "cache", "--seed", "-1")


def synth_out_exists(w: World) -> list[str]:
    (w.tmp / "out").mkdir()
    (w.tmp / "out" / "mine.txt").write_text("precious")
    return ["--cache", str(w.tmp / "cache"), "synth", "--profile", "smoke", "--out", str(w.tmp / "out")]


def gap_bogus_method(w: World) -> list[str]:
    return ["--cache", str(w.tmp / "cache"), "gap", "--profile", "smoke", "--methods", "bogus"]


def ctrl_c(w: World) -> list[str]:
    import csdn.experiment

    def interrupted(self):
        raise KeyboardInterrupt

    w.mp.setattr(csdn.experiment.Experiment, "check_test_images", interrupted)
    return w.train(w.cache())


@dataclass(frozen=True)
class Case:
    setup: Callable[[World], list[str]]
    expect: str  # a regex the one error line must match (usually the file at fault and the fix)
    code: int = 2


CASES = {
    "--cache is a file": Case(cache_is_a_file, r"cache .*/file is a file, not a folder"),
    "--reports is a file": Case(reports_is_a_file, r"--reports folder .*/reports is a file, not a folder"),
    "read-only reports folder": Case(reports_read_only, r"--reports folder .*/reports: permission denied"),
    "read-only cache, a stage to train": Case(
        cache_read_only_stage_missing, r"cannot write .*/runs/stage3-\w+: the file system is read-only"
    ),
    "disk full saving a checkpoint (torch: unexpected pos)": Case(
        disk_full_checkpoint, r"cannot write .*/checkpoints/epoch_0001/train_state.pt: no space left"
    ),
    "disk full saving CLIP features (safetensors)": Case(
        disk_full_features, r"cannot write .*/features/clip-\w+.safetensors: no space left"
    ),
    "disk full building an image cache (ENOSPC, not SIGBUS)": Case(
        disk_full_image_cache, r"cannot write .*images.npy: no space"
    ),
    "latest.json is {}": Case(latest_json_empty, r"checkpoints/latest.json: not a checkpoint pointer .*delete it"),
    "latest.json is garbage": Case(latest_json_garbage, r"checkpoints/latest.json: not a checkpoint pointer"),
    "done.json is garbage": Case(done_json_garbage, r"stage2-\w+/done.json: not a finished stage's record .*delete"),
    "final.safetensors truncated": Case(final_truncated, r"stage3-\w+/final.safetensors: unreadable .*delete"),
    "features/clip-*.safetensors truncated": Case(
        features_truncated, r"features/clip-\w+.safetensors: unreadable .*delete"
    ),
    "images.npy truncated": Case(images_npy_truncated, r"images.npy: unreadable image cache array .*delete"),
    "test_id.txt binary": Case(test_id_binary, r"exp/test_id.txt: not a text file"),
    "query image unreadable (found before training)": Case(query_image_unreadable, r"cam3/\d+/\S+: not a readable"),
    "data folder missing (real profile)": Case(data_folder_missing, r"nowhere: missing folder \(the SYSU-MM01 root"),
    "stats --profile sysu-rn50 --data X": Case(stats_real_profile_data, r"sysu/cam1: missing folder"),
    "--clip DIR without local-dir:": Case(clip_folder_without_local_dir, r"is a folder.*local-dir:.*clipdir"),
    "--seed -1": Case(seed_negative, r"seed must be an integer in 0\.\.4294967295 .*got -1"),
    "synth --out on an existing folder": Case(synth_out_exists, r"out exists and is not a finished SynthVI tree"),
    "gap --methods bogus": Case(gap_bogus_method, r"methods must be .*got \('bogus',\)"),
    "Ctrl-C": Case(ctrl_c, r"interrupted; rerun the same command to resume", code=130),
}


def outcome(case: Case, world: World) -> tuple[str, str]:
    """``("clear" | "silent" | "traceback" | "unclear", what the user saw)`` of one case."""
    argv = case.setup(world)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except Exception:
        return "traceback", traceback.format_exc(limit=-3)
    lines = ERROR_LINE.findall(err.getvalue())
    seen = lines[-1] if lines else err.getvalue()[-500:]
    if code == 0:
        return "silent", seen
    if code == case.code and len(lines) == 1 and "Traceback" not in err.getvalue() and re.search(case.expect, seen):
        return "clear", seen
    return "unclear", f"exit {code}: {seen}"


def main_report() -> int:
    """Run every case and print each outcome and the counts."""
    counts = {"clear": 0, "silent": 0, "traceback": 0, "unclear": 0}
    with tempfile.TemporaryDirectory() as scratch:
        warm = make_warm_cache(Path(scratch) / "warm")
        for number, (name, case) in enumerate(CASES.items()):
            with pytest.MonkeyPatch.context() as mp:
                tmp = Path(scratch) / f"case{number}"
                tmp.mkdir()
                kind, seen = outcome(case, World(tmp, warm, mp))
            counts[kind] += 1
            print(f"{kind:9s} {name}\n          {seen.strip()}")
    print(
        f"\n{len(CASES)} cases: {counts['clear']} clear errors, {counts['silent']} silent wrong results, "
        f"{counts['traceback']} raw tracebacks, {counts['unclear']} other"
    )
    return 0 if counts["clear"] == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main_report())
