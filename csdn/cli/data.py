"""``csdn synth``, ``csdn stats`` and ``csdn pretrain-clip``: the data and the tiny CLIP, before any training."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from csdn.cli.options import add_command, experiment_config
from csdn.config import SYNTH_LAYOUTS
from csdn.data.registry import DATASETS as REGISTERED_DATASETS
from csdn.errors import ConfigError


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``synth``, ``stats`` and ``pretrain-clip`` to the ``csdn`` subcommands."""
    p = add_command(sub, "synth", cmd_synth, "generate the SynthVI world in a dataset layout")
    p.add_argument("--layout", choices=SYNTH_LAYOUTS, help="the profile's (sysu) unless given")
    p.add_argument("--out", type=Path, default=None, help="folder to write (default: the artifact cache)")
    p = add_command(sub, "stats", cmd_stats, "dataset statistics")
    p.add_argument("--dataset", choices=REGISTERED_DATASETS, help="a real dataset (needs --data)")
    p.add_argument("--data", help="root folder of the real dataset")
    p.add_argument("--layout", choices=SYNTH_LAYOUTS, help="SynthVI layout (without --dataset)")
    add_command(sub, "pretrain-clip", cmd_pretrain_clip, "pretrain the tiny CLIP on SynthVI captions")


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate SynthVI in a layout (into --out, or the artifact cache) and print its statistics."""
    from csdn.synthvi.layouts import WRITERS, describe_counts, load_metadata, synthvi_root

    cfg, _ = experiment_config(args)
    layout = cfg.data.synth_layout
    t0 = time.perf_counter()
    if args.out:
        root = Path(args.out)
        try:
            WRITERS[layout](cfg.data.synth, root, progress=True)
        except FileExistsError as error:  # --out holds something else: not ours to overwrite
            raise ConfigError(f"synth --out: {error}") from error
    else:
        root = synthvi_root(cfg.data.synth, layout, args.cache, progress=True)
    counts = load_metadata(root)["counts"]
    print(f"SynthVI ({args.profile}, {layout} layout) at {root} in {time.perf_counter() - t0:.1f}s")
    print(describe_counts(counts, cfg.data.synth))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print split and camera statistics of a dataset (real with --dataset/--data, else the profile's SynthVI)."""
    print_statistics(open_data(args))
    return 0


def open_data(args: argparse.Namespace):
    """The dataset of the command line's configuration (SynthVI generated into the cache when needed)."""
    from csdn.sources import open_dataset

    cfg, _ = experiment_config(args)
    return open_dataset(cfg.data, args.cache, progress=True)


def print_statistics(reader) -> None:
    """The split and per-camera tables of a dataset reader."""
    from csdn.data.stats import camera_table, split_table

    print(f"\n{reader.title} at {reader.root}\n")
    print(split_table(reader).to_string(index=False))
    print("\ntraining images per camera:\n")
    print(camera_table(reader.train).to_string(index=False))


def cmd_pretrain_clip(args: argparse.Namespace) -> int:
    """Pretrain (or load from the cache) the profile's tiny CLIP on SynthVI captions."""
    from csdn.synthvi.pretrain import read_summary, tiny_clip

    cfg, _ = experiment_config(args)
    t0 = time.perf_counter()
    folder = tiny_clip(cfg.clip.pretrain, cfg.data.synth, args.cache, cfg.compute)
    print(f"tiny CLIP ({cfg.clip.pretrain.arch}) at local-dir:{folder} ({time.perf_counter() - t0:.1f}s)")
    print(read_summary(folder))
    return 0
