"""The ``csdn`` console script. Config enters here (profile name, flags, ``$CSDN_PROFILE``/``$CSDN_CACHE``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from csdn.artifacts import default_cache_root
from csdn.config import DataConfig, ExperimentConfig, get_profile, profile_from_env


def _data_config(cfg: ExperimentConfig, args: argparse.Namespace) -> DataConfig:
    data = cfg.data
    if getattr(args, "dataset", None):
        data = dataclasses.replace(data, dataset=args.dataset, root=args.data)
    if getattr(args, "layout", None):
        data = dataclasses.replace(data, synth_layout=args.layout)
    return data


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate SynthVI in a layout (into --out, or the artifact cache) and print its statistics."""
    from csdn.data.sources import WRITERS, synthvi_root
    from csdn.data.synth_layouts import load_metadata

    cfg = get_profile(args.profile)
    t0 = time.perf_counter()
    if args.out:
        root = Path(args.out)
        WRITERS[args.layout](cfg.data.synth, root, progress=True)
    else:
        root = synthvi_root(cfg.data.synth, args.layout, args.cache, progress=True)
    counts = load_metadata(root)["counts"]
    print(f"SynthVI ({args.profile}, {args.layout} layout) at {root} in {time.perf_counter() - t0:.1f}s")
    print(counts)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print split and camera statistics of a dataset (real with --dataset/--data, else the profile's SynthVI)."""
    _print_statistics(_open(args))
    return 0


def _open(args: argparse.Namespace):
    from csdn.data.sources import open_dataset

    cfg = get_profile(args.profile)
    return open_dataset(_data_config(cfg, args), args.cache, progress=True)


def _print_statistics(reader) -> None:
    from csdn.data.stats import camera_table, split_table

    print(f"\n{type(reader).__name__} at {reader.root}\n")
    print(split_table(reader).to_string(index=False))
    print("\ntraining images per camera:\n")
    print(camera_table(reader.train).to_string(index=False))


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: generate the demo SynthVI world and describe it."""
    t0 = time.perf_counter()
    reader = _open(args)
    _print_statistics(reader)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s (artifact cache: {args.cache})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csdn", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None, help="artifact cache root (default $CSDN_CACHE or ~/.cache/csdn)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str, default_profile: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--profile", default=default_profile or profile_from_env(), help="named profile (smoke, demo, ...)")
        p.set_defaults(func=fn)
        return p

    p = add("synth", cmd_synth, "generate the SynthVI world in a dataset layout")
    p.add_argument("--layout", choices=["sysu", "regdb", "llcm"], default="sysu")
    p.add_argument("--out", type=Path, default=None, help="folder to write (default: the artifact cache)")
    p = add("stats", cmd_stats, "dataset statistics")
    p.add_argument("--dataset", choices=["sysu", "regdb", "llcm"], help="a real dataset (needs --data)")
    p.add_argument("--data", help="root folder of the real dataset")
    p.add_argument("--layout", choices=["sysu", "regdb", "llcm"], help="SynthVI layout (without --dataset)")
    add("demo", cmd_demo, "the embedded pipeline on the demo profile", default_profile="demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "dataset", None) and not getattr(args, "data", None):
        print(f"csdn: --dataset {args.dataset} needs --data /path/to/{args.dataset}", file=sys.stderr)
        return 2
    args.cache = args.cache or default_cache_root()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
