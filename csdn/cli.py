"""The ``csdn`` console script. Config enters here (profile name, flags, ``$CSDN_PROFILE``/``$CSDN_CACHE``).

Every command builds its configuration the same way: the ``--profile``, then the command's convenience
flags (``--seed``, ``--clip``, ``--variant``, ...: each is one dotted override such as ``model.variant``),
then the ``--config FILE`` files (.yaml/.yml/.json), then the ``--set KEY=VALUE`` entries, a later value
winning; all through :func:`csdn.overrides.override`. Every report records the overrides it ran with.

Exit status: 0 on success; 2 on bad input, i.e. a :class:`~csdn.errors.CsdnError` (a config value, a
dataset, a checkpoint, CLIP weights, a non-finite loss), printed as one line ``csdn: error: ...`` like a
bad command line. Any other exception is a bug and keeps its traceback.

``train``, ``eval`` and ``demo`` also run under torchrun (``torchrun --nproc_per_node N -m csdn train ...``):
every process runs the pipeline on its share, rank 0 prints and writes the report.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from csdn.artifacts import default_cache_root
from csdn.config import SYNTH_LAYOUTS, ExperimentConfig, get_profile, profile_from_env, to_dict
from csdn.data.registry import DATASETS as REGISTERED_DATASETS
from csdn.errors import CheckpointError, ClipWeightsError, ConfigError, CsdnError
from csdn.model.network import VARIANTS
from csdn.overrides import format_overrides, load_overrides, override, parse_overrides

EXIT_BAD_INPUT = 2  # exit status of a CsdnError (and of argparse's usage errors)
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
        WRITERS[layout](cfg.data.synth, root, progress=True)
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


def _run_and_report(args: argparse.Namespace, zero_shot: bool, trained_only: bool = False) -> int:
    from csdn.experiment import Experiment
    from csdn.train.distributed import init_from_env, shutdown

    cfg, overrides = experiment_config(args)
    dist = init_from_env(cfg.device)  # one process, or this rank of a torchrun job
    try:
        t0 = time.perf_counter()
        experiment = Experiment(cfg, args.cache, dist=dist, trained_only=trained_only)
        features = _trained_features(args, experiment) if trained_only else None
        results = {cfg.model.variant: experiment.evaluate(features)}
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
    if getattr(args, "weights", None) or getattr(args, "run", None):  # csdn eval of a given checkpoint
        extra["evaluated"] = str(args.weights or args.run)
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
    """Evaluate a trained network (--weights FILE, --run DIR, or the cache's for this config); never trains."""
    if args.weights and args.run:
        raise ConfigError("give --weights FILE or --run DIR, not both")
    return _run_and_report(args, zero_shot=args.zero_shot, trained_only=True)


def _trained_features(args: argparse.Namespace, experiment):
    """``features_of`` of the network ``csdn eval`` evaluates (given, or the cache's); never trains one."""
    net = _given_network(args, experiment) if args.weights or args.run else _cached_network(args, experiment)
    return experiment.features_of(net.embed, net)


def _given_network(args: argparse.Namespace, experiment):
    """The network of ``--weights FILE`` or ``--run DIR`` (with a note when the run had another config)."""
    from csdn.experiment import read_done

    source = args.weights or args.run
    try:
        net = experiment.network_from_weights(source) if args.weights else experiment.network_from_run(source)
    except ClipWeightsError as error:
        raise ClipWeightsError(
            f"{error}. Every tensor of the network comes from {source}: with an open_clip architecture "
            "(RN50, ViT-B-16) --clip random builds it without CLIP weights"
        ) from error
    trained_key = read_done(args.run).get("config_key") if args.run else experiment.stage3_key
    if trained_key != experiment.stage3_key:
        print(
            f"note: {args.run} was trained under another config (key {trained_key}, this config's is "
            f"{experiment.stage3_key}); its weights fit and are evaluated under this config's data and protocol",
            file=sys.stderr,
        )
    return net


def _cached_network(args: argparse.Namespace, experiment):
    """The cache's trained network of the config; refuses with the ``csdn train`` command to run."""
    from csdn.experiment import NotTrainedError

    try:
        return experiment.network
    except NotTrainedError as error:
        raise NotTrainedError(f"{error}. To train it: {_train_command(args)}") from error


# argparse destination -> option of the train/eval flags that take a value (to print a train command)
_TRAIN_FLAGS = {f: f"--{f}" for f in ("seed", "device", "clip", "arch", "variant", "sii")}


def _train_command(args: argparse.Namespace) -> str:
    """The ``csdn train`` command line with the flags, config files and overrides of ``args`` (an eval)."""
    words = ["csdn", "--cache", str(args.cache), "train", "--profile", args.profile]
    words += ["--data", args.data] if args.data else []
    for dest, option in _TRAIN_FLAGS.items():
        words += [option, str(getattr(args, dest))] if getattr(args, dest) is not None else []
    if args.sync_bn is not None:
        words.append("--sync-bn" if args.sync_bn else "--no-sync-bn")
    words += ["--skip-bad-images"] if args.skip_bad_images else []
    return shlex.join(words + config_arguments(args))


def cmd_convert_release(args: argparse.Namespace) -> int:
    """Convert the authors' released checkpoint (.pth) to this package's network weights (.safetensors)."""
    from csdn.artifacts import atomic_save_tensors
    from csdn.model.release import (
        convert_release_state_dict,
        read_release_checkpoint,
        release_num_ids,
        release_target,
    )

    if args.output.suffix != ".safetensors":
        raise ConfigError(f"the output {args.output} must be a .safetensors file")
    state = read_release_checkpoint(args.input)
    try:
        target = release_target(release_num_ids(state), arch=args.arch, image_size=(args.height, args.width))
        converted, report = convert_release_state_dict(state, target)
    except CheckpointError as error:
        raise CheckpointError(f"{args.input}: {error}") from error
    if report.missing:
        raise CheckpointError(f"{args.input} leaves network tensors unfilled: {', '.join(report.missing[:5])}")
    atomic_save_tensors(converted, args.output)
    print(f"{args.input} -> {args.output}: {report.summary()}")
    print(f"the text side is not part of the image network: {_prefixes(report.unused)}")
    print(
        "evaluate it with the release's stem: csdn eval --profile sysu-rn50 --data /path/to/SYSU-MM01 "
        f"--weights {shlex.quote(str(args.output))} --set model.release_stem=true"
    )
    return 0


def _prefixes(keys: list[str]) -> str:
    """``prefix (count)`` of the first two dotted parts of ``keys`` (e.g. ``module.text_encoder (148)``)."""
    counts: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        counts[prefix] = counts.get(prefix, 0) + 1
    return ", ".join(f"{prefix} ({n})" for prefix, n in counts.items()) or "none"


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
        ("eval", cmd_eval, "evaluate a trained model (--weights, --run, or the cache's); never trains"),
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
            p.add_argument(
                "--weights",
                type=Path,
                help="stage-3 network weights (.safetensors: a run's final/best.safetensors, or a converted "
                "release checkpoint) to evaluate under this config",
            )
            p.add_argument(
                "--run", type=Path, help="a finished stage-3 run folder ($CSDN_CACHE/runs/stage3-<key>) to evaluate"
            )
    _add_convert_release(sub)
    from csdn.analysis.commands import add_commands

    add_commands(sub)  # ablate, gap
    return parser


def _add_convert_release(sub) -> None:
    from csdn.model.release import RELEASE_ARCH, RELEASE_IMAGE_SIZE

    text = "convert the authors' released CSDN checkpoint (nengdong96/CSDN, .pth) to network weights"
    p = sub.add_parser("convert-release", help=text, description=text + " for csdn eval --weights")
    p.add_argument("input", type=Path, help="the release's .pth (a state_dict, read with weights_only=True)")
    p.add_argument("output", type=Path, help="the .safetensors file to write")
    p.add_argument("--arch", default=RELEASE_ARCH, help=f"open_clip architecture (default {RELEASE_ARCH})")
    p.add_argument("--height", type=int, default=RELEASE_IMAGE_SIZE[0], help="input height of the release")
    p.add_argument("--width", type=int, default=RELEASE_IMAGE_SIZE[1], help="input width of the release")
    p.set_defaults(func=cmd_convert_release)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "dataset", None) and not getattr(args, "data", None):
        return _fail(f"--dataset {args.dataset} needs --data /path/to/{args.dataset}")
    try:
        args.cache = args.cache or default_cache_root()
        return args.func(args)
    except CsdnError as error:  # bad input: one clear line; anything else is a bug and keeps its traceback
        return _fail(str(error))


def _fail(message: str) -> int:
    print(f"csdn: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
