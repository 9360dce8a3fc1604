"""``csdn train``, ``csdn eval`` and ``csdn demo``: one run (or RegDB's ``--trial all``) into a run folder,
its results printed and reported (see :mod:`csdn.cli.main` for the checks made up front)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from csdn.cli.data import open_data, print_statistics
from csdn.cli.options import add_command, experiment_config
from csdn.cli.trials import all_trials
from csdn.cli.weights import apply_weights_settings, given_weights, trained_features
from csdn.config import SELECTS, ExperimentConfig, to_dict
from csdn.dryrun import DRY_RUN_IMAGES, DRY_RUN_STEPS, is_dry_run
from csdn.errors import ConfigError
from csdn.model.network import VARIANTS
from csdn.overrides import format_overrides


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval`` and ``demo`` to the ``csdn`` subcommands."""
    for name, fn, text in (
        ("train", cmd_train, "train CSDN (three stages) and evaluate"),
        ("eval", cmd_eval, "evaluate a trained model (--weights, --run, or the cache's); never trains"),
        ("demo", cmd_demo, "the whole embedded pipeline on the demo profile, with the vision-only baseline"),
    ):
        p = add_command(sub, name, fn, text, default_profile="demo" if name == "demo" else None)
        _add_model_flags(p)
        _add_run_folder_flags(p)
        add_run_flags(p)
        _add_dry_run(p, name)
        if name == "eval":
            _add_eval_flags(p)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The data root and the network: --data, --clip, --arch, --variant, --sii, --seed, --device."""
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


def _add_run_folder_flags(p: argparse.ArgumentParser) -> None:
    """Where the run is written (--out, --reports), how processes normalise, and bad training images."""
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


def _add_dry_run(p: argparse.ArgumentParser, name: str) -> None:
    """``--dry-run [N]``: eval caps the images evaluated; train and demo also every stage's steps."""
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


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    """What ``csdn eval`` evaluates besides the config's trained network: the frozen CLIP, given weights."""
    p.add_argument("--zero-shot", action="store_true", help="also evaluate the frozen CLIP")
    p.add_argument(
        "--weights",
        type=Path,
        help="stage-3 network weights (.safetensors: a run's final/best.safetensors, or a converted "
        "release checkpoint) to evaluate under this config",
    )
    p.add_argument("--run", type=Path, help="a finished stage-3 run folder ($CSDN_CACHE/runs/stage3-<key>) to evaluate")


def _trial(value: str) -> int | str:
    """A RegDB trial number, or ``all``."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a trial number (1..10) or all, not {value!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    """Train the three stages (cached, resumable) and evaluate on the test protocol."""
    if args.trial == "all" or args.jobs is not None:
        return all_trials(args, trained_only=False)
    return _run_and_report(args, zero_shot=False)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a trained network (--weights FILE, --run DIR, or the cache's for this config); never trains."""
    if args.weights and args.run:
        raise ConfigError("give --weights FILE or --run DIR, not both")
    if args.dry_run is not None:  # evaluation never trains: its dry run caps the images evaluated only
        args.set_overrides = [*args.set_overrides, f"eval.max_images={args.dry_run}"]
        args.dry_run = None
    if args.trial == "all" or args.jobs is not None:
        return all_trials(args, trained_only=True)
    return _run_and_report(args, zero_shot=args.zero_shot, trained_only=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: data, tiny CLIP, three stages, and the vision-only baseline on the
    same schedule (what notebooks 00, 05 and 08 compare against: :func:`csdn.plan.demo_runs`), SYSU protocol,
    report."""
    if args.trial == "all" or args.jobs is not None:
        raise ConfigError("--trial all and --jobs run RegDB's trials: use csdn train (or eval) --trial all")
    print_statistics(open_data(args))
    return _run_and_report(args, zero_shot=True, baseline=True)


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


def _schedule_notes(cfg: ExperimentConfig) -> list[str]:
    """A note for each training stage whose schedule the epochs cut short (warm-up or steps never reached)."""
    from csdn.train.schedule import cut_short

    stages = {"stage3": cfg.stage3}
    if cfg.model.uses_text:
        stages.update({"stage1": cfg.stage1, **({"stage2": cfg.stage2} if cfg.trains_sii else {})})
    notes = [cut_short(name, stage) for name, stage in stages.items()]
    return [note for note in notes if note]


def _print_plan(cfg: ExperimentConfig, cache: Path, run) -> None:
    """``csdn demo``: what it trains and about how long that takes, before anything trains (:mod:`csdn.plan`)."""
    from csdn.plan import demo_runs, training_plan

    plan = training_plan(demo_runs(cfg), cache)
    print(plan, end="\n\n")
    run.line(f"plan: {plan.summary()}", echo=False)


def _run_and_report(
    args: argparse.Namespace, zero_shot: bool, trained_only: bool = False, baseline: bool = False
) -> int:
    """Train (unless ``trained_only``) and evaluate the config, and with ``baseline`` also the vision-only
    baseline of :func:`csdn.plan.demo_runs` (its stages filed under ``vision-only-`` in the run folder)."""
    from csdn.experiment import Experiment
    from csdn.plan import BASELINE_VARIANT, demo_runs
    from csdn.runs import PrefixedStages
    from csdn.train.distributed import init_from_env, shutdown

    cfg, overrides = experiment_config(args)
    if trained_only and getattr(args, "weights", None):
        cfg, overrides = apply_weights_settings(args.weights, cfg, overrides)
    dist = init_from_env(cfg.device)  # one process, or this rank of a torchrun job
    weights = given_weights(args) if trained_only else None  # before the run folder: a bad one is refused
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
            features = trained_features(args, experiment)
        else:  # before any training: opens the dataset first, then decodes every test image once
            experiment.check_test_images()
            features = None
        baseline = baseline and cfg.model.variant != BASELINE_VARIANT
        if baseline and run is not None and dist.world_size == 1 and not is_dry_run(cfg):
            _print_plan(cfg, args.cache, run)
        results = {cfg.model.variant: experiment.evaluate(features)}
        histories = {"histories": experiment.histories}
        if baseline:  # the same schedule, data and seed, no text and one shared stem
            observer = PrefixedStages(run, BASELINE_VARIANT) if run is not None else None
            reference = Experiment(demo_runs(cfg)[BASELINE_VARIANT], args.cache, dist=dist, logger=observer)
            results[BASELINE_VARIANT] = reference.evaluate()
            histories[f"{BASELINE_VARIANT} histories"] = reference.histories
        if zero_shot:
            results["zero-shot CLIP"] = experiment.evaluate(experiment.zero_shot_features())
            if cfg.data.synthetic:  # the world's own ceiling
                from csdn.analysis.oracle import attribute_oracle

                oracle = attribute_oracle(experiment.dataset, options=experiment.split_options())
                results["attribute oracle (ceiling)"] = oracle.results
        if dist.is_main:
            seconds = time.perf_counter() - t0
            _report(run, cfg, overrides, experiment, results, seconds, histories, evaluated=_evaluated(args))
    except BaseException as error:
        if run is not None:
            run.failed(error)
        raise
    finally:
        if run is not None:
            run.close()
        shutdown(dist)
    return 0


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
    histories: dict[str, Any],
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
        **histories,  # each trained run's per-stage histories
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
