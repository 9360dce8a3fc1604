"""The configuration every ``csdn`` command builds: ``--profile``, the convenience flags, ``--config`` files and
``--set`` entries, in that order, a later value winning (see :mod:`csdn.cli.main`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from csdn.clip.loader import TINY_ARCHS
from csdn.config import ExperimentConfig, profile_config, profile_from_env
from csdn.dryrun import dry_run_overrides
from csdn.errors import ConfigError
from csdn.overrides import load_overrides, parse_overrides
from csdn.sources import dataset_label
from csdn.train.distributed import world_size_from_env

EPILOG = (
    "Config: --profile, then the flags, then --config files, then --set KEY=VALUE (dotted keys such as "
    "stage3.epochs=10 or model.sii=attention; a later value wins). Exit status 2 on bad input "
    "(one line: csdn: error: ...); any other error is a bug and shows its traceback."
)


def _arch_overrides(arch: str) -> dict[str, Any]:
    """``clip.arch``, and for a tiny arch also the arch the tiny-synthvi pretraining trains."""
    return {"clip.arch": arch, **({"clip.pretrain.arch": arch} if arch in TINY_ARCHS else {})}


def _ids_per_gpu_overrides(ids: int) -> dict[str, Any]:
    """Stage 3's global batch: ``ids`` identities on each of the torchrun processes (one process: ``ids``)."""
    if ids < 1:
        raise ConfigError(f"--ids-per-gpu must be >= 1, got {ids}")
    return {"stage3.ids_per_batch": ids * world_size_from_env()}


# argparse destination -> the dotted config key its flag sets (when given), or a function of the flag's value
# returning the overrides (a flag that sets several keys, or a derived value)
FLAG_OVERRIDES: dict[str, str | Callable[[Any], dict[str, Any]]] = {
    "seed": "seed",
    "device": "device",
    "clip": "clip.weights",
    "arch": _arch_overrides,
    "variant": "model.variant",
    "sii": "model.sii",
    "sync_bn": "sync_bn",
    "skip_bad_images": "skip_bad_images",
    "layout": "data.synth_layout",
    "trial": "data.regdb_trial",
    "validate_every": "validate_every",
    "select": "select",
    "trials": "eval.trials",
    "shots": "eval.sysu_shots",
    "rerank": "eval.rerank",
    "workers": "stage3.workers",
    "ids_per_gpu": _ids_per_gpu_overrides,
    "dry_run": dry_run_overrides,
}
# flags that act on one dataset layout only: argparse destination -> (layout, what is refused otherwise)
LAYOUT_FLAGS = {
    "trial": ("regdb", "--trial picks a RegDB trial"),
    "shots": ("sysu", "--shots sets SYSU-MM01's gallery shots"),
    "validate_every": ("sysu", "--validate-every validates on SYSU-MM01's held-out val ids"),
}


def add_command(
    sub: argparse._SubParsersAction, name: str, fn: Callable, help_text: str, default_profile: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand running ``fn`` with ``--profile`` (``default_profile``, else :func:`profile_from_env`)
    and the config options."""
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
    p.add_argument("--profile", default=default_profile or profile_from_env(), help="named profile (smoke, demo, ...)")
    add_config_options(p)
    p.set_defaults(func=fn)
    return p


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
    changes: dict[str, Any] = {}
    for dest, target in FLAG_OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is not None:
            changes.update(target(value) if callable(target) else {target: value})
    if getattr(args, "dataset", None):
        changes.update({"data.dataset": args.dataset, "data.root": args.data})
    for path in getattr(args, "config_files", []):
        changes.update(load_overrides(path, ExperimentConfig))
    changes.update(parse_overrides(getattr(args, "set_overrides", [])))
    return changes


def experiment_config(args: argparse.Namespace) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The command line's configuration (the profile with :func:`command_overrides`) and those overrides.

    ``--data`` is the profile's data root (refused for SynthVI); a flag that cannot act on the resulting
    configuration is refused (:func:`check_flags_act`).
    """
    changes = command_overrides(args)
    cfg = profile_config(args.profile, getattr(args, "data", None), changes)
    check_flags_act(args, cfg)
    return cfg, changes


def check_flags_act(args: argparse.Namespace, cfg: ExperimentConfig) -> None:
    """A :class:`ConfigError` for a flag given where it would change nothing (the config has no use for it)."""
    for dest, (layout, what) in LAYOUT_FLAGS.items():
        if getattr(args, dest, None) and cfg.data.layout != layout:  # (--validate-every 0 acts anywhere)
            raise ConfigError(f"{what}, but the data is {dataset_label(cfg.data)}: leave the flag out")
    if getattr(args, "validate_every", None) and not cfg.data.hold_out_val:
        raise ConfigError("--validate-every needs held-out val ids: also --set data.hold_out_val=true")
    if getattr(args, "trials", None) is not None and cfg.data.layout == "regdb":
        raise ConfigError("--trials: RegDB's test split has one fixed gallery (pick the split with --trial)")
    sii = getattr(args, "sii", None)
    if sii not in (None, "none") and cfg.model.variant != "csdn":
        raise ConfigError(f"--sii {sii} acts on variant csdn only (the one that fuses); {cfg.model.variant} has none")
    if getattr(args, "sync_bn", None) is not None and world_size_from_env() == 1:
        raise ConfigError("--sync-bn / --no-sync-bn act under torchrun only (one process normalises one batch)")
    if getattr(args, "layout", None) and not cfg.data.synthetic:
        raise ConfigError(f"--layout is the layout SynthVI is written in; {cfg.data.dataset} is read in its own")


def config_arguments(args: argparse.Namespace) -> list[str]:
    """The ``--config`` and ``--set`` arguments as given (to print a command that reproduces the run)."""
    words = [word for path in getattr(args, "config_files", []) for word in ("--config", str(path))]
    return words + [word for entry in getattr(args, "set_overrides", []) for word in ("--set", entry)]
