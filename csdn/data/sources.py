"""Open the dataset a :class:`~csdn.config.DataConfig` names: a real tree, or SynthVI generated on demand."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from csdn.artifacts import config_key
from csdn.data.llcm import LLCM
from csdn.data.regdb import RegDB
from csdn.data.synth_layouts import FORMAT_VERSION, write_llcm, write_regdb, write_sysu
from csdn.data.synthetic import SynthConfig
from csdn.data.sysu import SYSUMM01

Reader = SYSUMM01 | RegDB | LLCM
WRITERS = {"sysu": write_sysu, "regdb": write_regdb, "llcm": write_llcm}


def synthvi_root(synth: SynthConfig, layout: str, cache_root: Path, progress: bool = True) -> Path:
    """The SynthVI tree of ``synth`` in ``layout`` under the cache, written first if it is not there."""
    if layout not in WRITERS:
        raise ValueError(f"layout must be one of {sorted(WRITERS)}, got {layout!r}")
    key = config_key({"synth": asdict(synth), "format": FORMAT_VERSION})
    root = Path(cache_root) / "synthvi" / f"{layout}-{key}"
    WRITERS[layout](synth, root, progress=progress)
    return root


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
