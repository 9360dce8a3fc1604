"""The weights files commands read and write: ``csdn eval --weights/--run`` (checked, with the settings a file
records), the cache's trained network, and ``csdn convert-release`` (the authors' checkpoint to weights)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from csdn.cli.options import config_arguments
from csdn.config import ExperimentConfig
from csdn.errors import CheckpointError, ClipWeightsError, ConfigError
from csdn.overrides import format_overrides


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``convert-release`` to the ``csdn`` subcommands."""
    from csdn.model.release import RELEASE_ARCH, RELEASE_IMAGE_SIZE

    text = "convert the authors' released CSDN checkpoint (nengdong96/CSDN, .pth) to network weights"
    p = sub.add_parser("convert-release", help=text, description=text + " for csdn eval --weights")
    p.add_argument("input", type=Path, help="the release's .pth (a state_dict, read with weights_only=True)")
    p.add_argument("output", type=Path, help="the .safetensors file to write")
    p.add_argument("--arch", default=RELEASE_ARCH, help=f"open_clip architecture (default {RELEASE_ARCH})")
    p.add_argument("--height", type=int, default=RELEASE_IMAGE_SIZE[0], help="input height of the release")
    p.add_argument("--width", type=int, default=RELEASE_IMAGE_SIZE[1], help="input width of the release")
    p.set_defaults(func=cmd_convert_release)


def apply_weights_settings(
    weights: str | Path, cfg: ExperimentConfig, overrides: dict[str, Any]
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """``cfg`` and ``overrides`` with the settings the weights file records it needs (e.g. a converted release
    checkpoint's stem and preprocessing; :func:`csdn.experiment.config_for_weights`), said on stdout; a
    command-line setting that contradicts one is a :class:`ConfigError`."""
    from csdn.experiment import config_for_weights

    cfg, recorded, changes = config_for_weights(cfg, Path(weights), given=overrides)
    if not recorded:
        return cfg, overrides
    applied = format_overrides(changes) if changes else "none (the config has them already)"
    print(f"{weights} records the settings its weights need: {format_overrides(recorded)}; applied: {applied}")
    return cfg, {**overrides, **changes}  # only what changes the config names its run folder


def given_weights(args: argparse.Namespace) -> tuple[Path, str] | None:
    """The weights file ``csdn eval --weights/--run`` evaluates (checked first) and its digest; else None."""
    from csdn.artifacts import file_digest
    from csdn.experiment import FINAL, check_run_folder, check_weights_file

    if getattr(args, "weights", None):
        check_weights_file(args.weights)
        return args.weights, file_digest(args.weights)
    if getattr(args, "run", None):
        check_run_folder(args.run)
        return args.run / FINAL, file_digest(args.run / FINAL)
    return None


def trained_features(args: argparse.Namespace, experiment):
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
    from csdn.experiment import WEIGHTS_SETTINGS
    from csdn.model.release import (
        RELEASE_SETTINGS,
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
    atomic_save_tensors(converted, args.output, metadata={WEIGHTS_SETTINGS: json.dumps(RELEASE_SETTINGS)})
    print(f"{args.input} -> {args.output}: {report.summary()}")
    print(f"the text side is not part of the image network: {_prefixes(report.unused)}")
    print(f"recorded in the file, applied by csdn eval --weights: {format_overrides(RELEASE_SETTINGS)}")
    print(
        "evaluate it: csdn eval --profile sysu-rn50 --data /path/to/SYSU-MM01 "
        f"--weights {shlex.quote(str(args.output))}"
    )
    return 0


def _prefixes(keys: list[str]) -> str:
    """``prefix (count)`` of the first two dotted parts of ``keys`` (e.g. ``module.text_encoder (148)``)."""
    counts: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        counts[prefix] = counts.get(prefix, 0) + 1
    return ", ".join(f"{prefix} ({n})" for prefix, n in counts.items()) or "none"
