"""Open the dataset a :class:`~csdn.config.DataConfig` names: a real tree, or SynthVI generated on demand."""

from __future__ import annotations

from pathlib import Path

from csdn.data.llcm import LLCM
from csdn.data.regdb import RegDB
from csdn.synthvi.layouts import synthvi_root
from csdn.data.sysu import SYSUMM01

Reader = SYSUMM01 | RegDB | LLCM


def dataset_root(data, cache_root: Path, progress: bool = True) -> Path:
    """Where ``data`` (a DataConfig) lives on disk (generating SynthVI when needed)."""
    if data.dataset == "synthvi":
        return synthvi_root(data.synth, data.synth_layout, cache_root, progress)
    return Path(data.root).expanduser()


def open_dataset(data, cache_root: Path, progress: bool = True) -> Reader:
    """The reader for ``data`` (a DataConfig): SYSUMM01, RegDB (one trial) or LLCM."""
    root = dataset_root(data, cache_root, progress)
    if data.layout == "sysu":
        return SYSUMM01(root, hold_out_val=data.hold_out_val)
    if data.layout == "regdb":
        return RegDB(root, trial=data.regdb_trial)
    return LLCM(root)
