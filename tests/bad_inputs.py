"""Bad-input cases of the ``csdn`` CLI: each sets up one ordinary mistake or mishap and says what the user must see.

``tests/test_cli_errors.py`` asserts every case; run this file to print the counts
(``python tests/bad_inputs.py``): cases, clear errors, silent wrong results (exit 0 although the input
was bad), raw tracebacks, and other outcomes (an error line that does not name what it should).

A case runs ``csdn.cli.main`` in this process on a copy of a warm smoke cache (every stage done),
changes one thing first (a file truncated, a folder made read-only by monkeypatching, since tests run
as root, ...) and expects exit status 2 (130 for Ctrl-C, 143 for SIGTERM) with one line ``csdn: ...``
containing ``expect``, usually the name of the file at fault. A case whose right outcome is a result (exit
0: a 16-bit image read as it is, a schedule cut short run with a note) says so with ``code=0`` and a
``check`` of that result; exit 0 with a wrong result is a silent wrong result.
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
ERROR_LINE = re.compile(r"csdn: (?:error|interrupted|note)[^\n\r]*")


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


def _training_images(root: Path) -> list[Path]:
    """The SynthVI tree's training images (SYSU layout: the ids of exp/train_id.txt), sorted."""
    ids = [int(t) for t in (root / "exp" / "train_id.txt").read_text().split(",")]
    return sorted(p for i in ids for cam in ("cam1", "cam2") for p in (root / cam / f"{i:04d}").glob("*"))


def png_bomb(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A small PNG whose header declares ``width x height`` pixels (a decompression bomb for PIL)."""
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _zero_pixels(array_file: Path) -> None:
    """Zero every pixel of an image cache's array, its header kept (what bit rot or a half copy may leave)."""
    import numpy as np

    array = np.load(array_file, mmap_mode="r+")
    array[:] = 0
    array.flush()
    del array


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
    folders = ["--cache", str(w.tmp / "cache"), "--reports", str(w.tmp / "reports")]
    return [*folders[:2], "train", "--profile", "sysu-rn50", "--data", str(w.tmp / "nowhere"), *folders[2:]]


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


# -- issue 23: damaged caches, images read as they are, run folders that belong to their run -----------

SIXTEEN_BIT = 40000  # the value of the 16-bit image written over a training image (8 bits: 40000 / 257 = 156)


def image_cache_zeroed(w: World) -> list[str]:
    cache = w.cache()
    for array in (cache / "images").glob("*/images.npy"):
        _zero_pixels(array)
    return w.train(cache)


def final_damaged(w: World) -> list[str]:
    cache = w.cache()
    _flip_last_byte(w.run(cache, "stage3") / "final.safetensors")
    return w.train(cache)


def features_damaged(w: World) -> list[str]:
    cache = w.cache(stages=())
    _flip_last_byte(_one((cache / "features").glob("clip-*.safetensors")))
    return w.train(cache)


def tiny_clip_damaged(w: World) -> list[str]:
    cache = w.cache()
    _flip_last_byte(_one((cache / "tiny_clip").glob("*/open_clip_model.safetensors")))
    return w.train(cache)


def sixteen_bit_training_image(w: World) -> list[str]:
    from PIL import Image

    cache = w.cache()
    image = _training_images(_synthvi(cache))[0]
    with Image.open(image) as original:
        size = original.size
    Image.new("I;16", size, SIXTEEN_BIT).save(image, format="PNG")  # a 16-bit PNG named .jpg, as a camera may write
    return w.train(cache)


def sixteen_bit_scaled(w: World) -> str | None:
    """The 16-bit image in the training image cache: scaled to 156, not clipped to 255 (None when right)."""
    from csdn.data.cache import ImageCache

    image = str(_training_images(_synthvi(w.cache_root))[0])
    for folder in (w.cache_root / "images").iterdir():
        cache = ImageCache.open(folder) if (folder / "images.npy").is_file() else None
        rows = [i for i, r in enumerate(cache.records if cache else []) if r.path == image]
        if rows:
            mean = float(cache[rows[0]].mean())
            return None if abs(mean - round(SIXTEEN_BIT / 257)) <= 1 else f"cached with mean {mean:.1f}, not 156"
    return "the 16-bit image is in no image cache"


def bomb_training_image(w: World) -> list[str]:
    cache = w.cache(stages=())
    shutil.rmtree(cache / "tiny_clip")  # found before the tiny CLIP is pretrained
    png_bomb(_training_images(_synthvi(cache))[0])
    return w.train(cache)


def eval_out_users_folder(w: World) -> list[str]:
    mine = w.tmp / "mine"
    mine.mkdir()
    for name in ("config.json", "results.md", "log.txt"):
        (mine / name).write_text(f"the user's own {name}\n")
    return w.train(w.cache(), "--out", str(mine), command="eval")


def run_folder_in_use(w: World) -> list[str]:
    from filelock import FileLock

    out = w.tmp / "out"
    out.mkdir()
    lock = FileLock(str(out / ".csdn-run.lock"))
    lock.acquire()  # another process is writing it (released with the World)
    w.mp.setattr(w, "held", lock, raising=False)
    return w.train(w.cache(), "--seed", "1", "--out", str(out))


def run_folder_of_another_seed(w: World) -> list[str]:
    cache, out = w.cache(), w.tmp / "out"
    _quietly(w.train(cache, "--out", str(out)))
    return w.train(cache, "--seed", "1", "--out", str(out))


def run_folder_of_other_weights(w: World) -> list[str]:
    from csdn.artifacts import atomic_save_tensors, load_tensors

    cache, out = w.cache(), w.tmp / "out"
    final = w.run(cache, "stage3") / "final.safetensors"
    _quietly(w.train(cache, "--weights", str(final), "--out", str(out), command="eval"))
    other = {
        name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in load_tensors(final, "").items()
    }
    atomic_save_tensors(other, w.tmp / "other.safetensors")  # weights of the same network, other values
    return w.train(cache, "--weights", str(w.tmp / "other.safetensors"), "--out", str(out), command="eval")


def name_override(w: World) -> list[str]:
    return ["--cache", str(w.cache()), "stats", "--profile", "smoke", "--set", "name=myrun"]


def workers_negative(w: World) -> list[str]:
    return w.train(w.cache(stages=("stage1", "stage2")), "--workers", "-1")


def eval_dangling_run_link(w: World) -> list[str]:
    cache, out = w.cache(), w.tmp / "out"
    _quietly(w.train(cache, "--out", str(out)))
    shutil.rmtree(w.run(cache, "stage3"))  # the cache folder the link points to is deleted
    return w.train(cache, "--run", str(out / "stages" / "stage3"), command="eval")


def tensorboard_read_only(w: World) -> list[str]:
    cache, out = w.cache(), w.tmp / "out"
    _quietly(w.train(cache, "--out", str(out)))
    shutil.rmtree(cache / "runs")  # every stage to train again: the check must come before the first
    read_only(w.mp, out / "tensorboard", errno.EACCES)
    return w.train(cache, "--out", str(out))


def sigterm(w: World) -> list[str]:
    import signal

    import csdn.experiment

    def terminated(self):
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill` and a job scheduler send

    w.mp.setattr(csdn.experiment.Experiment, "check_test_images", terminated)
    return w.train(w.cache(), "--out", str(w.tmp / "out"))


def schedule_cut_short(w: World) -> list[str]:
    return w.train(w.cache(), "--set", "stage3.epochs=1")


def smoke_with_data(w: World) -> list[str]:
    (w.tmp / "sysu").mkdir()
    return w.train(w.tmp / "cache", "--data", str(w.tmp / "sysu"))


def convert_release_folder(w: World) -> list[str]:
    (w.tmp / "release").mkdir()
    return ["convert-release", str(w.tmp / "release"), str(w.tmp / "out.safetensors")]


def _quietly(argv: list[str]) -> None:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv


@dataclass(frozen=True)
class Case:
    setup: Callable[[World], list[str]]
    expect: str | None  # a regex the one csdn line must match (usually the file at fault and the fix); None: no line
    code: int = 2
    check: Callable[[World], str | None] | None = None  # exit 0: what is wrong with the result (None: nothing)


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
    # issue 23
    "image cache pixels zeroed (header kept)": Case(image_cache_zeroed, r"images/\w+/images.npy: damaged .*delete"),
    "final.safetensors damaged (a byte flipped)": Case(final_damaged, r"stage3-\w+/final.safetensors: damaged"),
    "features/clip-*.safetensors damaged": Case(features_damaged, r"features/clip-\w+.safetensors: damaged .*delete"),
    "tiny CLIP weights damaged": Case(tiny_clip_damaged, r"open_clip_model.safetensors: damaged .*delete the folder"),
    "16-bit PNG among the training images": Case(sixteen_bit_training_image, None, code=0, check=sixteen_bit_scaled),
    "decompression bomb among the training images": Case(bomb_training_image, r"\.jpg: a damaged file or a decomp"),
    "eval --out into the user's own folder": Case(eval_out_users_folder, r"mine: exists and is not a csdn run folder"),
    "two commands at once into one run folder": Case(run_folder_in_use, r"out: another csdn command is writing"),
    "--seed 1 into seed 0's run folder": Case(run_folder_of_another_seed, r"out: the run folder of another run"),
    "eval of other weights into a run folder": Case(run_folder_of_other_weights, r"out: the run folder of another run"),
    "stats --set name=myrun": Case(name_override, None, code=0),
    "--workers -1": Case(workers_negative, r"workers must be >= 0"),
    "eval --run <run folder>/stages/stage3, cache deleted": Case(
        eval_dangling_run_link, r"stages/stage3: a link to .*which no longer exists"
    ),
    "read-only tensorboard/ in the run folder": Case(tensorboard_read_only, r"tensorboard .*: permission denied"),
    "SIGTERM": Case(sigterm, r"interrupted \(SIGTERM\); rerun the same command to resume", code=143),
    "a schedule cut short (--set stage3.epochs=1)": Case(
        schedule_cut_short, r"note: stage3.epochs=1 ends before its warm-up ends .*milestones", code=0
    ),
    "--data with the smoke profile": Case(smoke_with_data, r"--set data.dataset=sysu"),
    "convert-release <a folder>": Case(convert_release_folder, r"release is a folder; pass the .pth file"),
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
    if code == 0 and case.code != 0:
        return "silent", seen
    problem = case.check(world) if code == 0 and case.check else None
    if problem:
        return "silent", problem
    said = re.search(case.expect, seen) if case.expect else not lines
    if code == case.code and len(lines) <= 1 and "Traceback" not in err.getvalue() and said:
        return "clear", lines[-1] if lines else f"exit {code}, as expected"
    return "unclear", f"exit {code}: {seen}"


def summary(counts: dict[str, int]) -> str:
    """The counts line (the README quotes it): cases as expected, silent wrong results, raw tracebacks, other."""
    results = sum(case.code == 0 for case in CASES.values())
    return (
        f"{len(CASES)} cases: {counts['clear']} as expected ({len(CASES) - results} one clear line, {results} exit 0 "
        f"with the right result), {counts['silent']} silent wrong results, {counts['traceback']} raw tracebacks, "
        f"{counts['unclear']} other"
    )


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
    print(summary(counts))
    return 0 if counts["clear"] == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main_report())
