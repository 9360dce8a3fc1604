"""The ``csdn`` console script. Config enters here (profile name, flags, ``$CSDN_PROFILE``/``$CSDN_CACHE``).

``train``, ``eval`` and ``demo`` also run under torchrun (``torchrun --nproc_per_node N -m csdn train ...``):
every process runs the pipeline on its share, rank 0 prints and writes the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from csdn.artifacts import default_cache_root
from csdn.config import DataConfig, ExperimentConfig, get_profile, profile_from_env
from csdn.model.network import VARIANTS


def _data_config(cfg: ExperimentConfig, args: argparse.Namespace) -> DataConfig:
    data = cfg.data
    if getattr(args, "dataset", None):
        data = dataclasses.replace(data, dataset=args.dataset, root=args.data)
    if getattr(args, "layout", None):
        data = dataclasses.replace(data, synth_layout=args.layout)
    return data


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate SynthVI in a layout (into --out, or the artifact cache) and print its statistics."""
    from csdn.synthvi.layouts import WRITERS, synthvi_root
    from csdn.synthvi.layouts import load_metadata

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
    from csdn.sources import open_dataset

    cfg = get_profile(args.profile)
    return open_dataset(_data_config(cfg, args), args.cache, progress=True)


def _print_statistics(reader) -> None:
    from csdn.data.stats import camera_table, split_table

    print(f"\n{type(reader).__name__} at {reader.root}\n")
    print(split_table(reader).to_string(index=False))
    print("\ntraining images per camera:\n")
    print(camera_table(reader.train).to_string(index=False))


def _experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    cfg = get_profile(args.profile, data_root=getattr(args, "data", None))
    changes: dict = {}
    if getattr(args, "seed", None) is not None:
        changes["seed"] = args.seed
    if getattr(args, "device", None):
        changes["device"] = args.device
    if getattr(args, "clip", None) or getattr(args, "arch", None):
        changes["clip"] = dataclasses.replace(cfg.clip, weights=args.clip or cfg.clip.weights, arch=args.arch or cfg.clip.arch)
    if getattr(args, "variant", None) or getattr(args, "sii", None):
        changes["model"] = dataclasses.replace(cfg.model, variant=args.variant or cfg.model.variant, sii=args.sii or cfg.model.sii)
    if getattr(args, "sync_bn", None) is not None:
        changes["sync_bn"] = args.sync_bn
    if getattr(args, "skip_bad_images", False):
        changes["skip_bad_images"] = True
    return dataclasses.replace(cfg, **changes)


def _run_and_report(args: argparse.Namespace, zero_shot: bool) -> int:
    from csdn.experiment import Experiment
    from csdn.train.distributed import init_from_env, shutdown

    cfg = _experiment_config(args)
    dist = init_from_env(cfg.device)  # one process, or this rank of a torchrun job
    try:
        t0 = time.perf_counter()
        experiment = Experiment(cfg, args.cache, dist=dist)
        results = {cfg.model.variant: experiment.evaluate()}
        if zero_shot:
            results["zero-shot CLIP"] = experiment.evaluate(experiment.zero_shot_features())
            if cfg.data.dataset == "synthvi" and cfg.data.layout == "sysu":  # the world's own ceiling
                from csdn.analysis.oracle import attribute_oracle

                oracle = attribute_oracle(experiment.dataset, modes=cfg.eval.sysu_modes, trials=cfg.eval.trials)
                results["attribute oracle (ceiling)"] = {key: oracle.results[key] for key in results[cfg.model.variant]
                                                         if key in oracle.results}
        if dist.is_main:
            _report(args, cfg, experiment, results, time.perf_counter() - t0)
    finally:
        shutdown(dist)
    return 0


def _report(args: argparse.Namespace, cfg: ExperimentConfig, experiment, results: dict, seconds: float) -> None:
    from csdn.reports import results_frame, write_report

    for per_protocol in results.values():
        for result in per_protocol.values():
            print(result.table(), end="\n\n")
    print(results_frame(results).to_string(index=False))
    extra = {"profile": cfg.name, "seconds": seconds, "histories": experiment.histories,
             "world_size": experiment.dist.world_size}
    if cfg.skip_bad_images:
        extra["skipped_images"] = experiment.skipped_images
        if experiment.skipped_images:
            print(f"\nskipped {len(experiment.skipped_images)} unreadable training image(s), listed in "
                  f"{experiment.train_cache.directory / 'skipped.json'} and in the report", file=sys.stderr)
    folder = Path(args.reports) / cfg.name
    written = write_report(folder, results, extra=extra)
    print(f"\nfinished in {seconds:.1f}s; report: {', '.join(str(p) for p in written)}")


def cmd_train(args: argparse.Namespace) -> int:
    """Train the three stages (cached, resumable) and evaluate on the test protocol."""
    return _run_and_report(args, zero_shot=False)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the (cached) trained model, and the zero-shot CLIP with --zero-shot."""
    return _run_and_report(args, zero_shot=args.zero_shot)


def cmd_pretrain_clip(args: argparse.Namespace) -> int:
    """Pretrain (or load from the cache) the profile's tiny CLIP on SynthVI captions."""
    from csdn.synthvi.pretrain import read_summary, tiny_clip

    cfg = get_profile(args.profile)
    t0 = time.perf_counter()
    folder = tiny_clip(cfg.clip.pretrain, cfg.data.synth, args.cache)
    print(f"tiny CLIP ({cfg.clip.pretrain.arch}) at local-dir:{folder} ({time.perf_counter() - t0:.1f}s)")
    print(read_summary(folder))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: data, tiny CLIP, three stages, SYSU protocol, report."""
    _print_statistics(_open(args))
    return _run_and_report(args, zero_shot=True)


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
    p = add("pretrain-clip", cmd_pretrain_clip, "pretrain the tiny CLIP on SynthVI captions")
    for name, fn, text in (("train", cmd_train, "train CSDN (three stages) and evaluate"),
                           ("eval", cmd_eval, "evaluate the trained model (cached stages are reused)"),
                           ("demo", cmd_demo, "the whole embedded pipeline on the demo profile")):
        p = add(name, fn, text, default_profile="demo" if name == "demo" else None)
        p.add_argument("--data", help="dataset root for real-data profiles (sysu-rn50, regdb-vitb16, ...)")
        p.add_argument("--clip", help="CLIP weights: tiny-synthvi, openai, a weights file, local-dir:<folder>, random")
        p.add_argument("--arch", help="open_clip architecture (RN50, ViT-B-16, csdn-tiny-rn, csdn-tiny-vit)")
        p.add_argument("--variant", choices=list(VARIANTS),
                       help="the network: csdn; clip-reid or vision-only (one shared stem); vision-only-stems")
        p.add_argument("--sii", choices=["official", "attention", "mean", "none"])
        p.add_argument("--seed", type=int)
        p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
        p.add_argument("--reports", default="reports", help="folder for result tables and figures")
        p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                       help="under torchrun: BatchNorm statistics over the global batch (default) or per process")
        p.add_argument("--skip-bad-images", action="store_true",
                       help="leave unreadable training images out (listed in the report) instead of stopping")
        if name == "eval":
            p.add_argument("--zero-shot", action="store_true", help="also evaluate the frozen CLIP")
    from csdn.analysis.commands import add_commands

    add_commands(sub)  # ablate, gap
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "dataset", None) and not getattr(args, "data", None):
        print(f"csdn: --dataset {args.dataset} needs --data /path/to/{args.dataset}", file=sys.stderr)
        return 2
    try:
        args.cache = args.cache or default_cache_root()
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as error:
        # bad input, a checkpoint that does not fit, a non-finite loss: one clear line, no traceback
        print(f"csdn: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
