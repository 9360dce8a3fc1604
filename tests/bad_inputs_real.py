"""The storage cases of ``tests/bad_inputs.py`` under real conditions, not monkeypatching (Linux, root only).

``sudo python tests/bad_inputs_real.py`` mounts small tmpfs folders to run ``csdn train --profile smoke``
as a subprocess on a disk that fills up at three points (SynthVI and tiny-CLIP checkpoints, a torch
training-state save), builds an image cache on a nearly full disk (a memory map there died of SIGBUS without
a word), evaluates a warm cache on a read-only mount, sends Ctrl-C (SIGINT) and SIGTERM to a
training run and reruns it, and starts two trains of different seeds into one ``--out`` at once. It prints
each outcome and the counts: clear errors, silent wrong results,
raw tracebacks. It needs the privilege to mount; it unmounts what it mounted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ERROR_LINE = re.compile(r"csdn: (?:error|interrupted)[^\n\r]*")


def csdn(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("CSDN_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "csdn", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)


def umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], check=True)


def classify(result: subprocess.CompletedProcess, code: int, expect: str) -> tuple[str, str]:
    lines = ERROR_LINE.findall(result.stderr)
    if "Traceback" in result.stderr:
        return "traceback", result.stderr.strip().splitlines()[-1]
    if result.returncode == 0:
        return "silent" if code else "clear", "exit 0" + (f": {lines[-1]}" if lines else "")
    seen = lines[-1] if lines else result.stderr[-300:]
    ok = result.returncode == code and len(lines) == 1 and re.search(expect, seen)
    return ("clear" if ok else "unclear"), seen


def disk_full(scratch: Path, size: str) -> tuple[str, str]:
    folder = scratch / f"full-{size}"
    mount_tmpfs(folder, size)
    try:
        result = csdn("--cache", str(folder / "cache"), "train", "--profile", "smoke", "--reports", str(folder / "r"))
    finally:
        umount(folder)
    return classify(result, 2, r"cannot write .*: no space left on the disk")


def disk_full_image_cache(scratch: Path, warm: Path) -> tuple[str, str]:
    """A warm cache without its image caches on a disk with 500 KiB left: the memory-mapped array cannot fit."""
    folder = scratch / "full-images"
    mount_tmpfs(folder, "200m")
    try:
        shutil.copytree(warm, folder / "cache", ignore=shutil.ignore_patterns("images"))
        free = shutil.disk_usage(folder).free - 500 * 1024
        with open(folder / "filler", "wb") as filler:
            filler.write(bytes(free))
        result = csdn("--cache", str(folder / "cache"), "eval", "--profile", "smoke", "--reports", str(scratch / "r"))
    finally:
        umount(folder)
    return classify(result, 2, r"cannot write .*images.npy: no space left on the disk")


def read_only_warm_cache(scratch: Path, warm: Path) -> tuple[str, str]:
    folder = scratch / "ro"
    mount_tmpfs(folder, "200m")
    try:
        shutil.copytree(warm, folder / "cache")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        result = csdn("--cache", str(folder / "cache"), "eval", "--profile", "smoke", "--reports", str(scratch / "r"))
    finally:
        umount(folder)
    return classify(result, 0, "")


def ctrl_c_then_rerun(scratch: Path) -> tuple[str, str]:
    args = ["--cache", str(scratch / "cc"), "train", "--profile", "smoke", "--reports", str(scratch / "ccr")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "csdn", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (scratch / "cc" / "runs").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # until the tiny-CLIP pretraining has started
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    first = classify(subprocess.CompletedProcess(args, process.returncode, "", stderr), 130, "rerun the same command")
    if first[0] != "clear":
        return first
    rerun = csdn(*args)
    return ("clear", first[1]) if rerun.returncode == 0 else ("unclear", f"the rerun failed: {rerun.stderr[-300:]}")


def sigterm_then_rerun(scratch: Path) -> tuple[str, str]:
    """SIGTERM (what `kill` and job schedulers send) mid-pretraining: one line, a line in log.txt, exit 143."""
    out = scratch / "st-out"
    args = ["--cache", str(scratch / "st"), "train", "--profile", "smoke", "--out", str(out)]
    process = _start(args)
    _wait_for(scratch / "st" / "runs")
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    first = classify(subprocess.CompletedProcess(args, process.returncode, "", stderr), 143, r"\(SIGTERM\); rerun")
    if first[0] != "clear":
        return first
    if "stopped: Terminated" not in (out / "log.txt").read_text():
        return "unclear", "log.txt does not say the run was terminated"
    rerun = csdn(*args)
    return ("clear", first[1]) if rerun.returncode == 0 else ("unclear", f"the rerun failed: {rerun.stderr[-300:]}")


def two_runs_into_one_folder(scratch: Path, warm: Path) -> tuple[str, str]:
    """A seed-0 and a seed-1 train at once into one --out: one writes it, the other is refused; never mixed."""
    cache, out = scratch / "race", scratch / "race-out"
    shutil.copytree(warm, cache)
    common = ["--cache", str(cache), "train", "--profile", "smoke", "--out", str(out)]
    first, second = _start(common), _start([*common, "--seed", "1"])
    errors = [p.communicate(timeout=600)[1] for p in (first, second)]
    results = [(p.returncode, err) for p, err in zip((first, second), errors)]
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    if codes != [0, 2] or not refused:
        return "silent", f"exit statuses {codes}: the folder may be mixed"
    seed = json.loads((out / "config.json").read_text())["seed"]
    report = json.loads((out / "results.json").read_text())["config"]["seed"]
    if seed != report or f"seed {seed}" not in (out / "results.md").read_text():
        return "silent", f"config.json says seed {seed}, results.json seed {report}"
    result = subprocess.CompletedProcess(common, 2, "", refused[0])
    return classify(result, 2, r"race-out: (?:another csdn command is writing|the run folder of another run)")


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("CSDN_CACHE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "csdn", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # e.g. until the tiny-CLIP pretraining has started
    time.sleep(1)


def main() -> int:
    counts = {"clear": 0, "silent": 0, "traceback": 0, "unclear": 0}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        warm = scratch / "warm"
        assert (
            csdn("--cache", str(warm), "train", "--profile", "smoke", "--reports", str(scratch / "w")).returncode == 0
        )
        cases = {f"disk full ({size} tmpfs)": lambda s=size: disk_full(scratch, s) for size in ("6m", "20m", "38m")}
        cases["disk full building an image cache (memory map)"] = lambda: disk_full_image_cache(scratch, warm)
        cases["read-only mount, warm cache: eval works"] = lambda: read_only_warm_cache(scratch, warm)
        cases["Ctrl-C (SIGINT), then the same command"] = lambda: ctrl_c_then_rerun(scratch)
        cases["SIGTERM, then the same command"] = lambda: sigterm_then_rerun(scratch)
        cases["two trains (seeds 0 and 1) at once into one --out"] = lambda: two_runs_into_one_folder(scratch, warm)
        for name, run in cases.items():
            kind, seen = run()
            counts[kind] += 1
            print(f"{kind:9s} {name}\n          {seen}")
    print(
        f"\n{len(cases)} cases: {counts['clear']} as expected, {counts['silent']} silent wrong results, "
        f"{counts['traceback']} raw tracebacks, {counts['unclear']} other"
    )
    return 0 if counts["clear"] == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
