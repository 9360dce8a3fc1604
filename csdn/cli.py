"""The ``csdn`` console script. Config enters here (profile name, flags, ``$CSDN_PROFILE``/``$CSDN_CACHE``).

Every command builds its configuration the same way: the ``--profile``, then the command's convenience
flags (``--seed``, ``--clip``, ``--variant``, ...: each is one dotted override such as ``model.variant``),
then the ``--config FILE`` files (.yaml/.yml/.json), then the ``--set KEY=VALUE`` entries, a later value
winning; all through :func:`csdn.overrides.override`. Every report records the overrides it ran with.

Exit status: 0 on success; 2 on bad input, i.e. a :class:`~csdn.errors.CsdnError` (a config value, a
dataset, a checkpoint, CLIP weights, a non-finite loss, a folder that cannot be written), printed as one
line ``csdn: error: ...`` like a bad command line; a write that fails for lack of space or permission is
reported the same way. 130 on Ctrl-C, with a line saying that rerunning the same command resumes. Any
other exception is a bug and keeps its traceback. ``train``, ``eval`` and ``demo`` check up front what
would otherwise fail only after training: the reports folder is writable, the dataset opens, and every
test image decodes (the image caches evaluation reads are built first).

``train``, ``eval`` and ``demo`` also run under torchrun (``torchrun --nproc_per_node N -m csdn train ...``):
every process runs the pipeline on its share, rank 0 prints and writes the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from csdn.artifacts import check_folder, default_cache_root, storage_error
from csdn.config import SYNTH_LAYOUTS, ExperimentConfig, get_profile, profile_from_env, to_dict
from csdn.data.registry import DATASETS as REGISTERED_DATASETS
from csdn.errors import ConfigError, CsdnError
from csdn.model.network import VARIANTS
from csdn.overrides import format_overrides, load_overrides, override, parse_overrides

EXIT_BAD_INPUT = 2  # exit status of a CsdnError (and of argparse's usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
EPILOG = (
    "Config: --profile, then the flags, then --config files, then --set KEY=VALUE (dotted keys such as "
    "stage3.epochs=10 or model.sii=attention; a later value wins). Exit status 2 on bad input "
    "(one line: csdn: error: ...); any other error is a bug and shows its traceback."
)
# argparse destination -> the dotted config key its flag sets (when given)
FLAG_OVERRIDES = {
    "seed": "seed",
    "device": "device",
    "clip": "clip.weights",
    "arch": "clip.arch",
    "variant": "model.variant",
    "sii": "model.sii",
    "sync_bn": "sync_bn",
    "skip_bad_images": "skip_bad_images",
    "layout": "data.synth_layout",
}


def add_config_options(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` and ``--config FILE``, both repeatable."""
    p.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by its dotted key, e.g. --set stage3.epochs=10 (repeatable)",
    )
    p.add_argument(
        "--config",
        dest="config_files",
        action="append",
        default=[],
        metavar="FILE",
        type=Path,
        help="a .yaml/.yml/.json file of overrides (dotted keys or nested mappings; repeatable)",
    )


def command_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted overrides of the command line: its flags, then its --config files, then its --set entries."""
    flags = {dest: getattr(args, dest, None) for dest in FLAG_OVERRIDES}
    changes = {FLAG_OVERRIDES[dest]: value for dest, value in flags.items() if value is not None}
    if getattr(args, "dataset", None):
        changes.update({"data.dataset": args.dataset, "data.root": args.data})
    for path in getattr(args, "config_files", []):
        changes.update(load_overrides(path, ExperimentConfig))
    changes.update(parse_overrides(getattr(args, "set_overrides", [])))
    return changes


def experiment_config(args: argparse.Namespace) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The command line's configuration (the profile with :func:`command_overrides`) and those overrides."""
    changes = command_overrides(args)
    return override(get_profile(args.profile, data_root=getattr(args, "data", None)), changes), changes


def config_arguments(args: argparse.Namespace) -> list[str]:
    """The ``--config`` and ``--set`` arguments as given (to print a command that reproduces the run)."""
    words = [word for path in getattr(args, "config_files", []) for word in ("--config", str(path))]
    return words + [word for entry in getattr(args, "set_overrides", []) for word in ("--set", entry)]


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate SynthVI in a layout (into --out, or the artifact cache) and print its statistics."""
    from csdn.synthvi.layouts import WRITERS, load_metadata, synthvi_root

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
    print(counts)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print split and camera statistics of a dataset (real with --dataset/--data, else the profile's SynthVI)."""
    _print_statistics(_open(args))
    return 0


def _open(args: argparse.Namespace):
    from csdn.sources import open_dataset

    cfg, _ = experiment_config(args)
    return open_dataset(cfg.data, args.cache, progress=True)


def _print_statistics(reader) -> None:
    from csdn.data.stats import camera_table, split_table

    print(f"\n{reader.title} at {reader.root}\n")
    print(split_table(reader).to_string(index=False))
    print("\ntraining images per camera:\n")
    print(camera_table(reader.train).to_string(index=False))


def _run_and_report(args: argparse.Namespace, zero_shot: bool) -> int:
    from csdn.experiment import Experiment
    from csdn.train.distributed import init_from_env, shutdown

    cfg, overrides = experiment_config(args)
    dist = init_from_env(cfg.device)  # one process, or this rank of a torchrun job
    try:
        t0 = time.perf_counter()
        experiment = Experiment(cfg, args.cache, dist=dist)
        experiment.check_test_images()  # opens the dataset first, then decodes every test image once
        results = {cfg.model.variant: experiment.evaluate()}
        if zero_shot:
            results["zero-shot CLIP"] = experiment.evaluate(experiment.zero_shot_features())
            if cfg.data.synthetic:  # the world's own ceiling
                from csdn.analysis.oracle import attribute_oracle

                oracle = attribute_oracle(experiment.dataset, options=experiment.split_options())
                results["attribute oracle (ceiling)"] = oracle.results
        if dist.is_main:
            _report(args, cfg, overrides, experiment, results, time.perf_counter() - t0)
    finally:
        shutdown(dist)
    return 0


def _report(
    args: argparse.Namespace,
    cfg: ExperimentConfig,
    overrides: dict[str, Any],
    experiment,
    results: dict,
    seconds: float,
) -> None:
    from csdn.reports import results_frame, write_report

    print(f"profile {cfg.name}; overrides: {format_overrides(overrides)}\n")
    for per_protocol in results.values():
        for result in per_protocol.values():
            print(result.table(), end="\n\n")
    print(results_frame(results).to_string(index=False))
    extra = {
        "profile": cfg.name,
        "seconds": seconds,
        "histories": experiment.histories,
        "world_size": experiment.dist.world_size,
        "config": to_dict(cfg),
    }
    if cfg.skip_bad_images:
        extra["skipped_images"] = experiment.skipped_images
        if experiment.skipped_images:
            print(
                f"\nskipped {len(experiment.skipped_images)} unreadable training image(s), listed in "
                f"{experiment.train_cache.directory / 'skipped.json'} and in the report",
                file=sys.stderr,
            )
    folder = Path(args.reports) / cfg.name
    written = write_report(folder, results, extra=extra, overrides=overrides)
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

    cfg, _ = experiment_config(args)
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
    parser = argparse.ArgumentParser(prog="csdn", description=__doc__, epilog=EPILOG)
    parser.add_argument(
        "--cache", type=Path, default=None, help="artifact cache root (default $CSDN_CACHE or ~/.cache/csdn)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str, default_profile: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
        p.add_argument(
            "--profile", default=default_profile or profile_from_env(), help="named profile (smoke, demo, ...)"
        )
        add_config_options(p)
        p.set_defaults(func=fn)
        return p

    p = add("synth", cmd_synth, "generate the SynthVI world in a dataset layout")
    p.add_argument("--layout", choices=SYNTH_LAYOUTS, help="the profile's (sysu) unless given")
    p.add_argument("--out", type=Path, default=None, help="folder to write (default: the artifact cache)")
    p = add("stats", cmd_stats, "dataset statistics")
    p.add_argument("--dataset", choices=REGISTERED_DATASETS, help="a real dataset (needs --data)")
    p.add_argument("--data", help="root folder of the real dataset")
    p.add_argument("--layout", choices=SYNTH_LAYOUTS, help="SynthVI layout (without --dataset)")
    p = add("pretrain-clip", cmd_pretrain_clip, "pretrain the tiny CLIP on SynthVI captions")
    for name, fn, text in (
        ("train", cmd_train, "train CSDN (three stages) and evaluate"),
        ("eval", cmd_eval, "evaluate the trained model (cached stages are reused)"),
        ("demo", cmd_demo, "the whole embedded pipeline on the demo profile"),
    ):
        p = add(name, fn, text, default_profile="demo" if name == "demo" else None)
        p.add_argument("--data", help="dataset root for real-data profiles (sysu-rn50, regdb-vitb16, ...)")
        p.add_argument("--clip", help="CLIP weights: tiny-synthvi, openai, a weights file, local-dir:<folder>, random")
        p.add_argument("--arch", help="open_clip architecture (RN50, ViT-B-16, csdn-tiny-rn, csdn-tiny-vit)")
        p.add_argument(
            "--variant",
            choices=list(VARIANTS),
            help="the network: csdn; clip-reid or vision-only (one shared stem); vision-only-stems",
        )
        p.add_argument("--sii", choices=["official", "attention", "mean", "none"])
        p.add_argument("--seed", type=int)
        p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
        p.add_argument("--reports", default="reports", help="folder for result tables and figures")
        p.add_argument(
            "--sync-bn",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="under torchrun: BatchNorm statistics over the global batch (default) or per process",
        )
        p.add_argument(
            "--skip-bad-images",
            action="store_true",
            default=None,
            help="leave unreadable training images out (listed in the report) instead of stopping",
        )
        if name == "eval":
            p.add_argument("--zero-shot", action="store_true", help="also evaluate the frozen CLIP")
    from csdn.analysis.commands import add_commands

    add_commands(sub)  # ablate, gap
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return _interrupted()


def _interrupted() -> int:
    """Ctrl-C: one line saying how to resume, and the shell's status for SIGINT."""
    _close_progress_bars()
    print(
        "csdn: interrupted; rerun the same command to resume (finished stages and the last epoch's "
        "checkpoint are kept)",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "dataset", None) and not getattr(args, "data", None):
        return _fail(f"--dataset {args.dataset} needs --data /path/to/{args.dataset}")
    try:
        args.cache = args.cache or default_cache_root()
        # up front, not after hours of training; a warm cache may be read-only, the reports folder is written
        check_folder(args.cache, "artifact cache (--cache or $CSDN_CACHE)", writable=False)
        if getattr(args, "reports", None):
            check_folder(args.reports, "--reports folder")
        return args.func(args)
    except CsdnError as error:  # bad input: one clear line; anything else is a bug and keeps its traceback
        return _fail(str(error))
    except OSError as error:  # a write that failed for lack of space or permission is no bug either
        converted = storage_error(error, error.filename or args.cache)
        if converted is None:
            raise
        return _fail(str(converted))


def _fail(message: str) -> int:
    _close_progress_bars()
    print(f"csdn: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _close_progress_bars() -> None:
    """Close the progress bars an exception left open, so that the message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
