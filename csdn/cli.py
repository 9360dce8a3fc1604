"""The ``csdn`` console script. Config enters here (profile name, flags, ``$CSDN_PROFILE``/``$CSDN_CACHE``).

Every command builds its configuration the same way: the ``--profile``, then the command's convenience
flags (``--seed``, ``--clip``, ``--variant``, ...: entries of :data:`FLAG_OVERRIDES`, each a dotted override
such as ``model.variant``, or a few of them: ``--arch``, ``--ids-per-gpu``; a flag that cannot act is refused),
then the ``--config FILE`` files (.yaml/.yml/.json), then the ``--set KEY=VALUE`` entries, a later value
winning; all through :func:`csdn.overrides.override`. Every report records the overrides it ran with.

Exit status: 0 on success; 2 on bad input, i.e. a :class:`~csdn.errors.CsdnError` (a config value, a
dataset, a checkpoint, CLIP weights, a non-finite loss, a folder that cannot be written), printed as one
line ``csdn: error: ...`` like a bad command line; a write that fails for lack of space or permission is
reported the same way. 130 on Ctrl-C and 143 on SIGTERM, with a line saying that rerunning the same command
resumes. Any
other exception is a bug and keeps its traceback. ``train``, ``eval`` and ``demo`` check up front what
would otherwise fail only after training: the reports folder is writable, the dataset opens, and every
test image decodes (the image caches evaluation reads are built first).

``train``, ``eval`` and ``demo`` write a run folder (``--out``, default ``<--reports>/<profile>-<variant>-seed<k>``,
see :mod:`csdn.runs`): resolved config, versions, a per-epoch log, CSV histories, TensorBoard, the report.
``--cache`` goes before or after the command (``csdn --cache X train`` or ``csdn train --cache X``).

``train``, ``eval`` and ``demo`` also run under torchrun (``torchrun --nproc_per_node N -m csdn train ...``):
every process runs the pipeline on its share, rank 0 prints and writes the report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from csdn.artifacts import check_folder, default_cache_root, storage_error
from csdn.clip.loader import TINY_ARCHS
from csdn.config import (
    SELECTS,
    SYNTH_LAYOUTS,
    ExperimentConfig,
    profile_config,
    profile_from_env,
    to_dict,
)
from csdn.data.registry import DATASETS as REGISTERED_DATASETS
from csdn.dryrun import DRY_RUN_IMAGES, DRY_RUN_STEPS
from csdn.errors import CheckpointError, ClipWeightsError, ConfigError, CsdnError
from csdn.model.network import VARIANTS
from csdn.overrides import format_overrides, load_overrides, parse_overrides
from csdn.sources import dataset_label
from csdn.train.distributed import world_size_from_env

EXIT_BAD_INPUT = 2  # exit status of a CsdnError (and of argparse's usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
EXIT_TERMINATED = 143  # SIGTERM, as a shell reports it
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


def _dry_run_overrides(steps: int) -> dict[str, Any]:
    from csdn.dryrun import dry_run_overrides

    return dry_run_overrides(steps)


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
    "dry_run": _dry_run_overrides,
}
# flags that act on one dataset layout only: argparse destination -> (layout, what is refused otherwise)
LAYOUT_FLAGS = {
    "trial": ("regdb", "--trial picks a RegDB trial"),
    "shots": ("sysu", "--shots sets SYSU-MM01's gallery shots"),
    "validate_every": ("sysu", "--validate-every validates on SYSU-MM01's held-out val ids"),
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


def run_folder_path(
    args: argparse.Namespace, cfg: ExperimentConfig, overrides: dict[str, Any], weights: tuple[Path, str] | None = None
) -> Path:
    """``--out``, or ``<--reports>/<profile>-<variant>-seed<k>[-<hash of the other overrides>]``, plus
    ``-weights-<digest>`` for ``csdn eval`` of given ``weights`` (file, digest)."""
    from csdn.runs import default_run_name

    if args.out:
        return Path(args.out)
    name = default_run_name(cfg, overrides) + (f"-weights-{weights[1][:8]}" if weights else "")
    return Path(args.reports) / name


def _open_run_folder(
    args: argparse.Namespace, cfg: ExperimentConfig, overrides: dict[str, Any], weights: tuple[Path, str] | None
):
    """The run folder of this command, claimed and started (first log line; printed)."""
    from tqdm.auto import tqdm

    from csdn.runs import RunFolder

    run = RunFolder(run_folder_path(args, cfg, overrides, weights), echo=tqdm.write)
    run.start(args.command, cfg, overrides, getattr(args, "argv", []), args.cache, weights=weights)
    return run


def _given_weights(args: argparse.Namespace) -> tuple[Path, str] | None:
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


def _schedule_notes(cfg: ExperimentConfig) -> list[str]:
    """A note for each training stage whose schedule the epochs cut short (warm-up or steps never reached)."""
    from csdn.train.schedule import cut_short

    stages = {"stage3": cfg.stage3}
    if cfg.model.uses_text:
        stages.update({"stage1": cfg.stage1, **({"stage2": cfg.stage2} if cfg.trains_sii else {})})
    notes = [cut_short(name, stage) for name, stage in stages.items()]
    return [note for note in notes if note]


def _run_and_report(args: argparse.Namespace, zero_shot: bool, trained_only: bool = False) -> int:
    from csdn.experiment import Experiment
    from csdn.train.distributed import init_from_env, shutdown

    cfg, overrides = experiment_config(args)
    if trained_only and getattr(args, "weights", None):
        cfg, overrides = apply_weights_settings(args.weights, cfg, overrides)
    dist = init_from_env(cfg.device)  # one process, or this rank of a torchrun job
    weights = _given_weights(args) if trained_only else None  # before the run folder: a bad one is refused
    notes = [] if trained_only else _schedule_notes(cfg)
    for note in notes if dist.is_main else []:
        print(f"csdn: note: {note}", file=sys.stderr)
    run = _open_run_folder(args, cfg, overrides, weights) if dist.is_main else None
    for note in notes if run is not None else []:
        run.line(f"note: {note}", echo=False)
    try:
        t0 = time.perf_counter()
        experiment = Experiment(cfg, args.cache, dist=dist, logger=run, trained_only=trained_only)
        if trained_only:  # csdn eval: the network first (a missing one is refused at once), then evaluation
            features = _trained_features(args, experiment)
        else:  # before any training: opens the dataset first, then decodes every test image once
            experiment.check_test_images()
            features = None
        results = {cfg.model.variant: experiment.evaluate(features)}
        if zero_shot:
            results["zero-shot CLIP"] = experiment.evaluate(experiment.zero_shot_features())
            if cfg.data.synthetic:  # the world's own ceiling
                from csdn.analysis.oracle import attribute_oracle

                oracle = attribute_oracle(experiment.dataset, options=experiment.split_options())
                results["attribute oracle (ceiling)"] = oracle.results
        if dist.is_main:
            _report(run, cfg, overrides, experiment, results, time.perf_counter() - t0, evaluated=_evaluated(args))
    except BaseException as error:
        if run is not None:
            run.failed(error)
        raise
    finally:
        if run is not None:
            run.close()
        shutdown(dist)
    return 0


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


def _evaluated(args: argparse.Namespace) -> str | None:
    """The weights file or run folder ``csdn eval`` was given, if any."""
    given = getattr(args, "weights", None) or getattr(args, "run", None)
    return str(given) if given else None


def _report(
    run,
    cfg: ExperimentConfig,
    overrides: dict[str, Any],
    experiment,
    results: dict,
    seconds: float,
    evaluated: str | None = None,
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
        "run_folder": str(run.path),
    }
    if evaluated:  # csdn eval of a given checkpoint
        extra["evaluated"] = evaluated
    if cfg.skip_bad_images:
        extra["skipped_images"] = experiment.skipped_images
        if experiment.skipped_images:
            print(
                f"\nskipped {len(experiment.skipped_images)} unreadable training image(s), listed in "
                f"{experiment.train_cache.directory / 'skipped.json'} and in the report",
                file=sys.stderr,
            )
    from csdn.dryrun import dry_run_note, is_dry_run
    from csdn.runs import describe

    description = describe(cfg)
    if is_dry_run(cfg):  # marked in the report and on the screen
        extra["dry_run"] = description = f"{dry_run_note(cfg)}. {description}"
        print(dry_run_note(cfg))
    written = run.finished(
        lambda: write_report(run.path, results, extra=extra, overrides=overrides, description=description)
    )  # the results, then the config and versions that describe them
    print()
    run.line(f"finished in {seconds:.1f}s; run folder {run.path}; report: {', '.join(p.name for p in written)}")


def cmd_train(args: argparse.Namespace) -> int:
    """Train the three stages (cached, resumable) and evaluate on the test protocol."""
    if args.trial == "all" or args.jobs is not None:
        return _all_trials(args, trained_only=False)
    return _run_and_report(args, zero_shot=False)


def _all_trials(args: argparse.Namespace, trained_only: bool) -> int:
    """``--trial all``: every RegDB trial's model, its results, the mean and sd (:mod:`csdn.trials`)."""
    from csdn.trials import run_all_trials

    if args.trial != "all":
        raise ConfigError("--jobs trains RegDB trials in parallel: it goes with --trial all")
    if getattr(args, "weights", None) or getattr(args, "run", None) or getattr(args, "zero_shot", None):
        raise ConfigError(
            "--trial all evaluates each trial's own cached model: leave out --weights, --run, --zero-shot"
        )
    args.trial = None  # the trials are set one by one
    cfg, overrides = experiment_config(args)
    return run_all_trials(args, cfg, overrides, trained_only)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a trained network (--weights FILE, --run DIR, or the cache's for this config); never trains."""
    if args.weights and args.run:
        raise ConfigError("give --weights FILE or --run DIR, not both")
    if args.dry_run is not None:  # evaluation never trains: its dry run caps the images evaluated only
        args.set_overrides = [*args.set_overrides, f"eval.max_images={args.dry_run}"]
        args.dry_run = None
    if args.trial == "all" or args.jobs is not None:
        return _all_trials(args, trained_only=True)
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


def cmd_pretrain_clip(args: argparse.Namespace) -> int:
    """Pretrain (or load from the cache) the profile's tiny CLIP on SynthVI captions."""
    from csdn.synthvi.pretrain import read_summary, tiny_clip

    cfg, _ = experiment_config(args)
    t0 = time.perf_counter()
    folder = tiny_clip(cfg.clip.pretrain, cfg.data.synth, args.cache, cfg.compute)
    print(f"tiny CLIP ({cfg.clip.pretrain.arch}) at local-dir:{folder} ({time.perf_counter() - t0:.1f}s)")
    print(read_summary(folder))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: data, tiny CLIP, three stages, SYSU protocol, report."""
    if args.trial == "all" or args.jobs is not None:
        raise ConfigError("--trial all and --jobs run RegDB's trials: use csdn train (or eval) --trial all")
    _print_statistics(_open(args))
    return _run_and_report(args, zero_shot=True)


def _trial(value: str) -> int | str:
    """A RegDB trial number, or ``all``."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a trial number (1..10) or all, not {value!r}") from None


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The data, validation, evaluation and speed flags of train, eval and demo (entries of FLAG_OVERRIDES)."""
    p.add_argument(
        "--trial",
        type=_trial,
        help="RegDB trial 1..10 (data.regdb_trial): each its own split and model; all: every trial, the mean and sd",
    )
    p.add_argument("--jobs", type=int, metavar="N", help="with --trial all: trials trained at once (worker processes)")
    p.add_argument(
        "--validate-every",
        type=int,
        metavar="N",
        help="validate stage 3 every N epochs on SYSU-MM01's held-out val ids (validate_every; 0: never)",
    )
    p.add_argument(
        "--select",
        choices=SELECTS,
        help="stage 3's result: the last epoch (final) or the best validation mAP (best_val, needs validation)",
    )
    p.add_argument("--trials", type=int, metavar="N", help="gallery trials averaged (eval.trials; SYSU-MM01, LLCM)")
    p.add_argument(
        "--shots",
        type=int,
        nargs="+",
        metavar="K",
        help="SYSU-MM01 gallery images per (id, camera) (eval.sysu_shots): 1 single-shot, 10 multi-shot; "
        "--shots 1 10 for both",
    )
    p.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="k-reciprocal re-ranking of the test distances (eval.rerank; k1=20, k2=6, lambda=0.3)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="DataLoader worker processes of stage 3 (stage3.workers; speed only: the same batches and cache)",
    )
    p.add_argument(
        "--ids-per-gpu",
        type=int,
        metavar="P",
        help="stage 3's global batch as P identities on each process: stage3.ids_per_batch = P x the number of "
        "torchrun processes (stage3.ids_per_batch is always the global batch, split over the processes; "
        "the learning rate is not scaled)",
    )


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
        p.add_argument(
            "--arch",
            help="open_clip architecture (RN50, ViT-B-16, csdn-tiny-rn, csdn-tiny-vit); with --clip tiny-synthvi "
            "(the embedded profiles' default) only a tiny one, which the SynthVI pretraining then trains",
        )
        p.add_argument(
            "--variant",
            choices=list(VARIANTS),
            help="the network: csdn; clip-reid or vision-only (one shared stem); vision-only-stems",
        )
        p.add_argument(
            "--sii",
            choices=["official", "attention", "mean", "none"],
            help="SII fusion of variant csdn (model.sii): official, attention, mean (parameter-free) or none",
        )
        p.add_argument("--seed", type=int, help="seed of every random choice of the run")
        p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help="run folder: config, log, per-epoch CSV and TensorBoard, report, links to the cached stages "
            "(default: <reports>/<profile>-<variant>-seed<k>, plus a hash of any other overrides)",
        )
        p.add_argument("--reports", default="reports", help="the folder of the default run folders (see --out)")
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
        add_run_flags(p)
        p.add_argument(
            "--dry-run",
            nargs="?",
            const=DRY_RUN_IMAGES if name == "eval" else DRY_RUN_STEPS,
            type=int,
            metavar="N",
            help=f"eval: rank at most N queries and gallery images per split (default {DRY_RUN_IMAGES}); train, demo: "
            f"check the config end to end, every stage 1 epoch of at most N steps (default {DRY_RUN_STEPS}), at most "
            f"{DRY_RUN_IMAGES} images evaluated per split, never cached",
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
    from csdn.commands import add_commands as add_model_commands

    add_model_commands(sub)  # embed, heatmaps
    for p in sub.choices.values():  # --cache after the command too; SUPPRESS keeps the one given before it
        p.add_argument("--cache", type=Path, default=argparse.SUPPRESS, help="artifact cache root (as csdn --cache)")
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``kill`` and job schedulers send), raised where the process is, as Ctrl-C is."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated("terminated by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _main(argv)
    except KeyboardInterrupt as interrupt:
        return _interrupted(interrupt)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupted(interrupt: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM: one line saying how to resume, and the shell's status for the signal."""
    _close_progress_bars()
    terminated = isinstance(interrupt, Terminated)
    print(
        f"csdn: interrupted{' (SIGTERM)' if terminated else ''}; rerun the same command to resume (finished "
        "stages and the last epoch's checkpoint are kept)",
        file=sys.stderr,
    )
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the run folder
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
