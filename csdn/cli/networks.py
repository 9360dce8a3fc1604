"""``csdn embed`` (a trained network as a feature extractor) and ``csdn heatmaps`` (where a match comes from).

Both build their configuration like every ``csdn`` command (:func:`csdn.cli.options.experiment_config`) and never
train: the network is ``--weights FILE``, ``--run DIR`` or the cache's trained one of the config.

- ``csdn embed --weights final.safetensors --infrared ir/ --visible rgb/ --out feats.npz`` embeds every image
  of the folders (or single files) with the network's own preprocessing and writes the features with their
  file names (:mod:`csdn.embed`; ``.npz``).
- ``csdn heatmaps --profile demo --queries 4 --top-k 5`` writes, per query, a PNG of the query and its top-k
  gallery with the similarity heatmaps (:mod:`csdn.analysis.heatmaps`) into ``<reports>/<profile>/heatmaps/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from csdn.cli.options import EPILOG, add_config_options, experiment_config
from csdn.cli.weights import apply_weights_settings
from csdn.config import profile_from_env
from csdn.data.records import INFRARED, VISIBLE
from csdn.errors import ConfigError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``embed`` and ``heatmaps`` to the ``csdn`` subcommands."""
    text = "features of any images from a trained network (its own preprocessing), written with their file names (.npz)"
    p = subparsers.add_parser("embed", help=text, description=text, epilog=EPILOG)
    _model_options(p)
    p.add_argument("images", nargs="*", type=Path, help="image files or folders (recursively) of --modality")
    p.add_argument("--modality", choices=(VISIBLE, INFRARED), help="the modality of the positional images")
    p.add_argument("--visible", action="append", default=[], type=Path, help="visible images: a file or folder")
    p.add_argument("--infrared", action="append", default=[], type=Path, help="infrared images: a file or folder")
    p.add_argument(
        "--out", required=True, type=Path, help="features file (.npz: features, paths, modalities, settings)"
    )
    p.add_argument("--batch-size", type=int, help="images per forward pass (default eval.batch_size)")
    p.set_defaults(func=cmd_embed)
    text = "PNGs of queries and their top-k gallery with where each similarity comes from (heatmaps)"
    p = subparsers.add_parser("heatmaps", help=text, description=text, epilog=EPILOG)
    _model_options(p)
    p.add_argument("--compare", help="also the cache's trained model of this config with another variant (vision-only)")
    p.add_argument("--queries", type=int, default=4, help="queries of distinct identities per split (default 4)")
    p.add_argument("--top-k", type=int, default=5, help="gallery images per query (default 5)")
    p.add_argument("--reports", default="reports", help="PNGs go to <reports>/<profile>/heatmaps unless --out")
    p.add_argument("--out", type=Path, help="the folder of the PNGs")
    p.set_defaults(func=cmd_heatmaps)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=profile_from_env(), help="named profile (smoke, demo, ...)")
    add_config_options(p)
    p.add_argument("--weights", type=Path, help="stage-3 weights (.safetensors: final/best, or a converted release)")
    p.add_argument("--run", type=Path, help="a finished stage-3 folder or a run folder of csdn train")
    p.add_argument("--data", help="dataset root of a real-data profile (only to name the config; not read)")
    p.add_argument("--clip", help="CLIP weights (random: the architecture only; every tensor is in --weights)")
    p.add_argument("--variant", help="the network variant of the weights (csdn, vision-only, ...)")
    p.add_argument("--device", help="auto (default), cpu, cuda, ...")


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed images of both modalities with a trained network and write the features with their file names."""
    from csdn.embed import image_files, load_extractor, weights_of_run, write_features

    inputs = _inputs(args)
    if args.out.suffix != ".npz":  # before any work
        raise ConfigError(f"--out {args.out}: features are written as .npz; name the file so")
    cfg, overrides = experiment_config(args)
    weights = args.weights or (weights_of_run(args.run) if args.run else None)
    if weights is not None:
        cfg, _ = apply_weights_settings(weights, cfg, overrides)
    extractor = load_extractor(cfg, args.cache, weights=weights, batch_size=args.batch_size)
    import torch

    t0 = time.perf_counter()
    paths, modalities, parts = [], [], []
    for modality, sources in inputs.items():
        files = [f for source in sources for f in image_files(source)]
        if files:
            parts.append(extractor.embed(files, modality, progress=True))
            paths += [str(f) for f in files]
            modalities += [modality] * len(files)
    features = torch.cat(parts)
    seconds = time.perf_counter() - t0
    write_features(args.out, features, paths, modalities, extractor.settings())
    print(
        f"{len(paths)} images embedded ({features.shape[1]} dims) by {extractor.source} in {seconds:.1f}s "
        f"({len(paths) / seconds:.1f} images/s) -> {args.out}"
    )
    return 0


def _inputs(args: argparse.Namespace) -> dict[str, list[Path]]:
    """The image sources per modality (positional ones take --modality)."""
    if args.images and not args.modality:
        raise ConfigError(
            "images given without their modality: add --modality visible|infrared, or use --visible/--infrared"
        )
    if args.modality and not args.images:
        raise ConfigError("--modality names the modality of positional images, but none are given")
    inputs = {VISIBLE: list(args.visible), INFRARED: list(args.infrared)}
    if args.images:
        inputs[args.modality] += list(args.images)
    if not any(inputs.values()):
        raise ConfigError("no images to embed: pass image files or folders (--visible DIR, --infrared DIR)")
    if args.weights and args.run:
        raise ConfigError("give --weights FILE or --run DIR, not both")
    return inputs


def cmd_heatmaps(args: argparse.Namespace) -> int:
    """Write one PNG per query of the first split (first trial): the query and its top-k under each model, with
    the maps of where each similarity comes from (:mod:`csdn.analysis.heatmaps`)."""
    from csdn.analysis.heatmaps import plot_matches, query_maps
    from csdn.analysis.retrieval import pick_queries
    from csdn.experiment import Experiment
    from csdn.overrides import override
    from csdn.reports import write_report_files

    if args.queries < 1 or args.top_k < 1:
        raise ConfigError(f"--queries and --top-k must be >= 1, got {args.queries} and {args.top_k}")
    if args.weights and args.run:
        raise ConfigError("give --weights FILE or --run DIR, not both")
    cfg, overrides = experiment_config(args)
    if args.weights:
        cfg, overrides = apply_weights_settings(args.weights, cfg, overrides)
    experiment = Experiment(cfg, args.cache, trained_only=True)
    models = {cfg.model.variant: _network(args, experiment)}
    if args.compare:
        other = Experiment(override(cfg, {"model.variant": args.compare}), args.cache, trained_only=True)
        models[args.compare] = (other, other.network)
    split = experiment.dataset.test_splits(experiment.split_options())[0]
    chosen = pick_queries(list(split.query), args.queries, seed=cfg.seed)
    maps = {name: query_maps(e, net, split, chosen, args.top_k) for name, (e, net) in models.items()}
    folder = args.out or Path(args.reports) / cfg.name / "heatmaps"
    figures = {}
    for row, index in enumerate(chosen):
        q = split.query[index]
        title = f"{split.title}: query pid {q.pid}, cam {q.cam}; similarity heatmaps"
        figures[f"{_slug(split.name)}-query{index}.png"] = plot_matches([(n, m[row]) for n, m in maps.items()], title)
    written = write_report_files(folder, figures)
    print(f"{len(written)} heatmap figure(s) ({', '.join(models)}) in {folder}")
    return 0


def _network(args: argparse.Namespace, experiment):
    """(experiment, network) of --weights, --run or the cache's trained model of the config."""
    from csdn.embed import weights_of_run

    source = args.weights or (weights_of_run(args.run) if args.run else None)
    return experiment, (experiment.network_from_weights(source) if source else experiment.network)


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace(">", "").replace("-", "_").replace(",", "")
