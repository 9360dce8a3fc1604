"""Open the dataset a :class:`~csdn.config.DataConfig` names: a real tree, or SynthVI generated on demand."""

from __future__ import annotations

from pathlib import Path

from csdn.data.protocol import Reader
from csdn.data.registry import reader_class
from csdn.synthvi.layouts import synthvi_root


def dataset_root(data, cache_root: Path, progress: bool = True) -> Path:
    """Where ``data`` (a DataConfig) lives on disk (generating SynthVI when needed)."""
    if data.synthetic:
        return synthvi_root(data.synth, data.layout, cache_root, progress)
    return Path(data.root).expanduser()


def open_dataset(data, cache_root: Path, progress: bool = True) -> Reader:
    """The reader of ``data`` (a DataConfig): the registered reader of its layout, on its tree."""
    return reader_class(data.layout).open(dataset_root(data, cache_root, progress), data)


def dataset_label(data) -> str:
    """What a result was measured on, from a ``DataConfig``: ``"SYSU-MM01"`` for the real data,
    ``"SynthVI (SYSU-MM01 protocol)"`` for SynthVI written in that dataset's layout."""
    title = reader_class(data.layout).title
    return f"SynthVI ({title} protocol)" if data.synthetic else title
