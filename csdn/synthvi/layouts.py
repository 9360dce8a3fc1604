"""Write SynthVI in the real on-disk layouts of SYSU-MM01, RegDB and LLCM.

Each ``write_X(cfg, root)`` renders into a temporary directory next to ``root`` and renames it into
place (:func:`csdn.artifacts.build_once`), so ``root`` is either absent or complete. It returns the
counts it wrote and stores them, with the config, every identity's attributes and every image's
caption, in ``root/synthvi.json`` (read it back with :func:`load_metadata`).
Calling a writer again on a finished tree of the same config returns its counts without rendering.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from csdn.artifacts import atomic_write_json, build_once, config_key, is_complete
from csdn.data.llcm import LLCM
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.regdb import RegDB
from csdn.data.registry import DATASETS
from csdn.data.sysu import SYSUMM01
from csdn.synthvi.cameras import LLCM_CAMERAS, LLCM_NIR_CAMS, REGDB_CAMERAS, SYSU_CAMERAS, CameraSpec
from csdn.synthvi.render import render_image
from csdn.synthvi.world import (
    PURPOSE_LLCM,
    PURPOSE_REGDB,
    PURPOSE_SYSU,
    Identity,
    SynthConfig,
    caption,
    image_rng,
    make_identities,
)

METADATA_FILE = "synthvi.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class _Item:
    """One image to render: where it goes and what it shows."""

    relpath: str  # path relative to the layout root, "/"-separated
    identity: Identity  # who is in it
    camera: CameraSpec  # who sees it
    index: int  # image number of this (identity, camera), from 1


def _stream(camera: CameraSpec) -> int:
    """A random-stream code unique per camera of a layout (visible and infrared share numbers in LLCM)."""
    return 2 * camera.cam + (camera.modality == INFRARED)


def _render_items(
    cfg: SynthConfig, out: Path, items: list[_Item], purpose: int, progress: bool, desc: str
) -> dict[str, str]:
    """Render and save every item under ``out``; return the caption of each image by relpath."""
    captions: dict[str, str] = {}
    made: set[Path] = set()
    for item in tqdm(items, desc=desc, unit="img", disable=not progress, leave=False):
        rng = image_rng(cfg.seed, purpose, item.identity.pid, _stream(item.camera), item.index)
        img = render_image(item.identity, item.camera, rng, height=cfg.height, width=cfg.width)
        path = out / item.relpath
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        if path.suffix == ".jpg":
            Image.fromarray(img).save(path, format="JPEG", quality=cfg.jpeg_quality)
        else:
            Image.fromarray(img).save(path)
        captions[item.relpath] = caption(item.identity, item.camera.modality, rng)
    return captions


def _write_layout(
    cfg: SynthConfig,
    root: Path,
    layout: str,
    items: list[_Item],
    purpose: int,
    text_files: dict[str, str],
    counts: dict,
    extra: dict,
    progress: bool,
) -> dict:
    """Render ``items`` and write ``text_files`` into a fresh ``root`` atomically; return ``counts``."""
    root = Path(root)
    if is_complete(root):
        meta = load_metadata(root)
        if meta.get("layout") != layout or meta.get("config") != asdict(cfg):
            raise FileExistsError(
                f"{root} already holds a SynthVI {meta.get('layout')!r} tree of another config; "
                f"remove it or choose another root for this {layout!r} config"
            )
        return meta["counts"]
    if root.exists():
        raise FileExistsError(f"{root} exists and is not a finished SynthVI tree; remove it or choose another root")
    identities = {item.identity.pid: item.identity for item in items}

    def produce(tmp: Path) -> None:
        captions = _render_items(cfg, tmp, items, purpose, progress, desc=f"SynthVI {layout}")
        for relpath, text in text_files.items():
            (tmp / relpath).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relpath).write_text(text)
        atomic_write_json(
            tmp / METADATA_FILE,
            {
                "format": "synthvi",
                "version": FORMAT_VERSION,
                "layout": layout,
                "config": asdict(cfg),
                "counts": counts,
                **extra,
                "identities": {str(pid): identities[pid].attributes for pid in sorted(identities)},
                "captions": captions,
            },
        )

    build_once(root, produce)
    return counts


def _id_line(pids: Iterable[int]) -> str:
    """One comma-separated line of unpadded ids, as in SYSU-MM01's exp/*.txt and LLCM's idx/test_id.txt."""
    return ",".join(str(p) for p in sorted(pids)) + "\n"


def _by_cam(items: list[_Item], pids: set[int], cams: Iterable[CameraSpec]) -> dict[str, int]:
    return {f"cam{c.cam}": sum(1 for i in items if i.camera == c and i.identity.pid in pids) for c in cams}


def _modality_counts(items: list[_Item], pids: set[int]) -> dict[str, int]:
    chosen = [i for i in items if i.identity.pid in pids]
    return {m: sum(1 for i in chosen if i.camera.modality == m) for m in (VISIBLE, INFRARED)}


def write_sysu(cfg: SynthConfig, root: Path, progress: bool = False) -> dict:
    """SYSU-MM01 layout: ``cam{1..6}/{pid:04d}/{k:04d}.jpg`` and ``exp/{train,val,test}_id.txt``.

    Cameras 1, 2, 4, 5 are visible (1, 2 indoor), 3 and 6 infrared (3 indoor). Every identity has
    ``images_per_cam`` images in every camera. ``train_id.txt`` lists the training identities that are
    not in ``val_id.txt`` (the real files: 296 + 99); ``test_id.txt`` the test identities.
    Returns ``{"layout", "ids": {split: n}, "images": {split: {"camN": n}},
    "modality_images": {split: {modality: n}}, "total_images"}`` for splits train / val / test.
    """
    pools = make_identities(cfg)
    train_pool = [i.pid for i in pools["train"]]
    chosen = np.random.default_rng([cfg.seed, PURPOSE_SYSU]).choice(train_pool, size=cfg.val_ids, replace=False)
    splits = {
        "train": sorted(set(train_pool) - {int(p) for p in chosen}),
        "val": sorted(int(p) for p in chosen),
        "test": [i.pid for i in pools["test"]],
    }
    cameras = sorted(SYSU_CAMERAS, key=lambda c: c.cam)
    people = sorted(pools["train"] + pools["test"], key=lambda i: i.pid)
    items = [
        _Item(f"cam{c.cam}/{ident.pid:04d}/{k:04d}.jpg", ident, c, k)
        for ident in people
        for c in cameras
        for k in range(1, cfg.images_per_cam + 1)
    ]
    sets = {s: set(p) for s, p in splits.items()}
    counts = {
        "layout": "sysu",
        "ids": {s: len(p) for s, p in splits.items()},
        "images": {s: _by_cam(items, sets[s], cameras) for s in splits},
        "modality_images": {s: _modality_counts(items, sets[s]) for s in splits},
        "total_images": len(items),
    }
    text_files = {f"exp/{s}_id.txt": _id_line(p) for s, p in splits.items()}
    cams = {f"cam{c.cam}": {"modality": c.modality, "scene": c.scene} for c in cameras}
    return _write_layout(
        cfg, root, "sysu", items, PURPOSE_SYSU, text_files, counts, {"splits": splits, "cameras": cams}, progress
    )


def regdb_split(cfg: SynthConfig, pids: list[int], trial: int) -> tuple[list[int], list[int]]:
    """The (train, test) pids of one RegDB trial: a seeded random half each (train gets the smaller)."""
    order = np.random.default_rng([cfg.seed, PURPOSE_REGDB, trial]).permutation(sorted(pids))
    half = len(order) // 2
    return sorted(int(p) for p in order[:half]), sorted(int(p) for p in order[half:])


def _idx_lines(items: list[_Item], pids: list[int]) -> str:
    """``<relpath> <label>`` lines, labels contiguous from 0 in ascending pid order."""
    label = {pid: i for i, pid in enumerate(sorted(pids))}
    return "".join(f"{i.relpath} {label[i.identity.pid]}\n" for i in items if i.identity.pid in label)


def write_regdb(cfg: SynthConfig, root: Path, progress: bool = False) -> dict:
    """RegDB layout: ``Visible/{pid:04d}/{k:02d}.bmp``, ``Thermal/...`` and ``idx/`` split files.

    All re-ID identities (train and test pools) form the identity set; each trial ``t`` in
    ``1..regdb_trials`` splits it in random halves written to ``idx/{train,test}_{visible,thermal}_{t}.txt``
    as ``<relpath> <label>`` lines, labels contiguous from 0 per file in ascending pid order.
    Returns ``{"layout", "ids", "images": {modality: n}, "trials": {"t": {...}}, "total_images"}``.
    """
    pools = make_identities(cfg)
    people = sorted(pools["train"] + pools["test"], key=lambda i: i.pid)
    folder = {VISIBLE: "Visible", INFRARED: "Thermal"}
    per_modality = {
        c.modality: [
            _Item(f"{folder[c.modality]}/{ident.pid:04d}/{k:02d}.bmp", ident, c, k)
            for ident in people
            for k in range(1, cfg.regdb_images + 1)
        ]
        for c in REGDB_CAMERAS
    }
    pids = [i.pid for i in people]
    text_files, trials = {}, {}
    for t in range(1, cfg.regdb_trials + 1):
        train, test = regdb_split(cfg, pids, t)
        for part, part_pids in (("train", train), ("test", test)):
            text_files[f"idx/{part}_visible_{t}.txt"] = _idx_lines(per_modality[VISIBLE], part_pids)
            text_files[f"idx/{part}_thermal_{t}.txt"] = _idx_lines(per_modality[INFRARED], part_pids)
        r = cfg.regdb_images
        trials[str(t)] = {
            "train_ids": len(train),
            "test_ids": len(test),
            "train_visible": len(train) * r,
            "train_thermal": len(train) * r,
            "test_visible": len(test) * r,
            "test_thermal": len(test) * r,
        }
    items = per_modality[VISIBLE] + per_modality[INFRARED]
    counts = {
        "layout": "regdb",
        "ids": len(pids),
        "images": {m: len(v) for m, v in per_modality.items()},
        "trials": trials,
        "total_images": len(items),
    }
    return _write_layout(cfg, root, "regdb", items, PURPOSE_REGDB, text_files, counts, {}, progress)


def _llcm_cams(cfg: SynthConfig, pid: int) -> dict[str, list[int]]:
    """The cameras one LLCM identity passes, by day (visible) and by night (near-infrared)."""
    rng = np.random.default_rng([cfg.seed, PURPOSE_LLCM, pid])
    vis = sorted(int(c) for c in rng.choice(np.arange(1, 10), size=cfg.llcm_cams_per_id, replace=False))
    nir = sorted(int(c) for c in rng.choice(LLCM_NIR_CAMS, size=cfg.llcm_cams_per_id, replace=False))
    return {VISIBLE: vis, INFRARED: nir}


def write_llcm(cfg: SynthConfig, root: Path, progress: bool = False) -> dict:
    """LLCM layout: ``{train,test}_{vis,nir}/cam{c}/{pid:04d}/{pid:04d}_c{c:02d}_s{k:06d}_f{k:04d}_{vis,nir}.jpg``.

    File names follow the real LLCM (pid, camera, sequence, frame, modality). Each identity is seen by
    ``llcm_cams_per_id`` of the 9 visible cameras and of the 8 near-infrared ones (no NIR camera 3, as in
    LLCM), ``images_per_cam`` images each. ``idx/train_vis.txt`` / ``idx/train_nir.txt`` (and
    ``idx/test_vis.txt`` / ``idx/test_nir.txt``) hold ``<relpath> <label>`` lines, labels contiguous
    from 0 in ascending pid order and shared by both modalities; ``idx/test_id.txt`` is one
    comma-separated line of test ids.
    Returns ``{"layout", "ids": {split: n}, "images": {"train_vis": {"camN": n}, ...}, "total_images"}``.
    """
    pools = make_identities(cfg)
    tag = {VISIBLE: "vis", INFRARED: "nir"}
    cams = {(c.modality, c.cam): c for c in LLCM_CAMERAS}
    items_by: dict[str, list[_Item]] = {}
    for split in ("train", "test"):
        for modality in (VISIBLE, INFRARED):
            folder = f"{split}_{tag[modality]}"
            items_by[folder] = [
                _Item(
                    f"{folder}/cam{c}/{ident.pid:04d}/{ident.pid:04d}_c{c:02d}_s{k:06d}_f{k:04d}_{tag[modality]}.jpg",
                    ident,
                    cams[(modality, c)],
                    k,
                )
                for ident in pools[split]
                for c in _llcm_cams(cfg, ident.pid)[modality]
                for k in range(1, cfg.images_per_cam + 1)
            ]
    pids = {split: [i.pid for i in pools[split]] for split in ("train", "test")}
    text_files = {
        f"idx/{folder}.txt": _idx_lines(items, pids[folder.split("_")[0]]) for folder, items in items_by.items()
    }
    text_files["idx/test_id.txt"] = _id_line(pids["test"])
    camera_numbers = {VISIBLE: range(1, 10), INFRARED: LLCM_NIR_CAMS}
    images = {
        folder: {
            f"cam{c}": sum(1 for i in items if i.camera.cam == c)
            for c in camera_numbers[VISIBLE if folder.endswith("vis") else INFRARED]
        }
        for folder, items in items_by.items()
    }
    items = [i for folder_items in items_by.values() for i in folder_items]
    counts = {
        "layout": "llcm",
        "ids": {split: len(p) for split, p in pids.items()},
        "images": images,
        "total_images": len(items),
    }
    return _write_layout(cfg, root, "llcm", items, PURPOSE_LLCM, text_files, counts, {"splits": pids}, progress)


# SynthVI's writer for each reader it imitates; WRITERS names them as the dataset registry does.
_WRITER_OF: dict[type, Callable[..., dict]] = {SYSUMM01: write_sysu, RegDB: write_regdb, LLCM: write_llcm}
WRITERS: dict[str, Callable[..., dict]] = {name: _WRITER_OF[cls] for name, cls in DATASETS.items() if cls in _WRITER_OF}


def write_layout(layout: str, cfg: SynthConfig, root: Path, progress: bool = False) -> dict:
    """Dispatch to ``write_sysu`` / ``write_regdb`` / ``write_llcm`` by name."""
    if layout not in WRITERS:
        raise ValueError(f"unknown SynthVI layout {layout!r}; expected one of {sorted(WRITERS)}")
    return WRITERS[layout](cfg, root, progress=progress)


def synthvi_pid(record: Record) -> int:
    """The SynthVI identity of an image of any layout: every writer stores it under a ``<pid:04d>`` folder
    (RegDB's index files renumber identities from 0, so a RegDB record's ``pid`` is not it)."""
    name = Path(record.path).parent.name
    if not name.isdigit():
        raise ValueError(f"{record.path} is not in a SynthVI <pid:04d> folder")
    return int(name)


def load_metadata(root: Path) -> dict:
    """The ``synthvi.json`` of a written SynthVI tree (config, counts, attributes, captions)."""
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a SynthVI tree; write one with csdn.synthvi.layouts.write_sysu, "
            "write_regdb or write_llcm"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete the tree and write it again") from exc
    if not isinstance(meta, dict) or meta.get("format") != "synthvi":
        raise ValueError(f"{path} is not SynthVI metadata (no format 'synthvi'); delete the tree and write it again")
    return meta


def synthvi_root(synth: SynthConfig, layout: str, cache_root: Path, progress: bool = True) -> Path:
    """The SynthVI tree of ``synth`` in ``layout`` under the cache, written first if it is not there."""
    if layout not in WRITERS:
        raise ValueError(f"layout must be one of {sorted(WRITERS)}, got {layout!r}")
    key = config_key({"synth": asdict(synth), "format": FORMAT_VERSION})
    root = Path(cache_root) / "synthvi" / f"{layout}-{key}"
    WRITERS[layout](synth, root, progress=progress)
    return root


def describe_counts(counts: dict, synth: SynthConfig) -> str:
    """A written tree's ``counts`` for people: identities per split, images per camera of each folder, and
    what the config's numbers become in this layout (SYSU holds ``val_ids`` of ``train_ids`` out for
    validation; an LLCM camera no identity passes)."""
    layout, ids = counts["layout"], counts["ids"]

    def in_split_order(names) -> list[str]:  # train, val, test (the JSON file sorts them by name)
        return sorted(names, key=lambda name: ({"train": 0, "val": 1, "test": 2}.get(name.split("_")[0], 3), name))

    if isinstance(ids, dict):
        lines = [f"identities: {', '.join(f'{k} {ids[k]}' for k in in_split_order(ids))}"]
    else:
        lines = [f"identities: {ids}"]
    if layout == "sysu":
        lines[0] += (
            f" (the config's train_ids={synth.train_ids} counts training and validation identities: the "
            f"SYSU-MM01 layout lists val_ids={synth.val_ids} of them in exp/val_id.txt, held out of training)"
        )
    lines.append("images:")
    for folder in in_split_order(counts["images"]):
        per_camera = counts["images"][folder]
        cameras = ", ".join(f"{cam} {n}" for cam, n in per_camera.items()) if isinstance(per_camera, dict) else ""
        lines.append(f"  {folder}: {cameras or per_camera}")
    empty = [
        f"{folder} {cam}"
        for folder in in_split_order(counts["images"])
        if isinstance(counts["images"][folder], dict)
        for cam, n in counts["images"][folder].items()
        if n == 0
    ]
    if empty and layout == "llcm":
        lines.append(
            f"no images in {', '.join(empty)}: each identity is seen by llcm_cams_per_id={synth.llcm_cams_per_id} "
            "of LLCM's 9 visible and 8 near-infrared cameras, drawn at random per identity, and no identity of "
            "that split drew it (a small world such as smoke's can leave a camera empty; the LLCM reader and "
            "protocol do not need every camera)"
        )
    lines.append(f"{counts['total_images']} images in all")
    return "\n".join(lines)
