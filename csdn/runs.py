"""The run folder of ``csdn train``/``eval``/``demo``: everything one run did, under a human name.

:class:`RunFolder` is the :class:`~csdn.experiment.RunObserver` the CLI hands to an
:class:`~csdn.experiment.Experiment`. It writes::

    <run folder>/
      config.json        the resolved configuration (every field)
      overrides.json     the dotted overrides of the command line (flags, --config, --set)
      version.json       csdn, torch and Python versions, the command, the cache, the start time
      log.txt            one line per event: each epoch of each stage (losses, accuracy, val, lr, seconds),
                         a resume, a stage loaded from the cache; appended to by every run into the folder
      stage1.csv ...     the per-epoch history of each stage, one row per epoch (``csdn demo``'s baseline:
                         vision-only-stage3.csv, its stages filed under a prefix by PrefixedStages)
      tensorboard/       TensorBoard event files (scalars "<stage>/<metric>" by epoch)
      stages/stage1 ...  symbolic links to the stages' folders in the artifact cache
      stages.json        the same as a listing (path, loaded from the cache or trained, epochs)
      results.json, results.md, cmc_*.png   the report (csdn.reports.write_report)

A run folder belongs to one run: it is marked as csdn's (``.csdn-run.json``: the config's key and, for
``csdn eval`` of given weights, their digest) when created, and csdn refuses to write into an existing folder
that is not one of its run folders, or is the finished run folder (it holds results) of another
configuration or other weights; the folder of another run that never finished is taken over. One
process writes it at a time (``.csdn-run.lock``; a second is refused). ``config.json``, ``overrides.json``
and ``version.json`` are written with the report, so they always describe the results beside them; a
failed command leaves the results and provenance of the last successful one as they were.

Stages already in the cache are logged as loaded, with their stored history written to the CSV files
and TensorBoard, so a run on a warm cache still leaves a complete folder. Each line of the log is also
passed to ``echo`` (the CLI prints it above the progress bars).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from csdn.artifacts import atomic_write_bytes, atomic_write_json, check_folder, config_key
from csdn.config import ExperimentConfig, to_dict
from csdn.errors import ConfigError

TENSORBOARD = "tensorboard"  # subfolder of the event files
STAGES = "stages"  # subfolder of the links to the cached stage folders
LOG = "log.txt"
MARKER = ".csdn-run.json"  # what makes a folder a csdn run folder, and whose
LOCK = ".csdn-run.lock"  # held while a command writes the folder
DEFAULT_NAME_KEYS = ("seed", "model.variant")  # overrides the default folder name spells out


def default_run_name(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> str:
    """``<profile>-<variant>-seed<k>``, plus a short hash of any other overrides (so runs don't collide)."""
    name = f"{cfg.name}-{cfg.model.variant}-seed{cfg.seed}"
    rest = {key: value for key, value in overrides.items() if key not in DEFAULT_NAME_KEYS}
    return f"{name}-{config_key(rest, length=8)}" if rest else name


def describe(cfg: ExperimentConfig) -> str:
    """One line naming what a run is: profile, variant, seed, SII, CLIP weights and arch, data."""
    data = cfg.data.dataset if cfg.data.root is None else f"{cfg.data.dataset} at {cfg.data.root}"
    return (
        f"profile {cfg.name}, variant {cfg.model.variant}, seed {cfg.seed}, SII {cfg.model.sii}, "
        f"CLIP {cfg.clip.weights} ({cfg.clip.arch}), data {data}"
    )


LOSS_ORDER = ("id_loss", "triplet_loss", "hse_loss", "msel_loss")  # stage 3's terms in the order its prose gives
VALIDATION_ORDER = ("val_rank1", "val_mAP", "val_score")


def _column_rank(key: str) -> tuple[int, int, str, int]:
    """Sort key of a history column, in reading order: epoch, loss, the loss terms (stage 3's in
    :data:`LOSS_ORDER`), the other metrics by quantity with each one's visible column before its infrared one,
    validation (rank-1, mAP, score), lr, seconds."""
    if key in ("epoch", "loss", "lr", "seconds"):
        return {"epoch": 0, "loss": 1, "lr": 5, "seconds": 6}[key], 0, "", 0
    if key.endswith("loss"):
        return 2, LOSS_ORDER.index(key) if key in LOSS_ORDER else len(LOSS_ORDER), key, 0
    if key.startswith("val_"):
        return 4, VALIDATION_ORDER.index(key) if key in VALIDATION_ORDER else len(VALIDATION_ORDER), key, 0
    for order, modality in enumerate(("visible", "infrared")):
        if key.endswith(f"_{modality}"):
            return 3, 0, key.removesuffix(f"_{modality}"), order
    return 3, 0, key, -1


def metric_columns(history: list[Mapping[str, Any]]) -> list[str]:
    """Every column of ``history`` in one fixed order (a cached history's keys come back sorted)."""
    return sorted({key for row in history for key in row}, key=_column_rank)


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``key=value`` pairs of an epoch's metrics (``lr`` in scientific notation, seconds last)."""
    words = []
    for key in metric_columns([metrics]):
        if key in ("epoch", "seconds"):
            continue
        value = metrics[key]
        if not isinstance(value, (int, float)):
            words.append(f"{key}={value}")
        else:
            words.append(f"{key}={value:.3e}" if key == "lr" else f"{key}={value:.4g}")
    if "seconds" in metrics:
        words.append(f"{metrics['seconds']:.1f}s")
    return " ".join(words)


def history_csv(history: list[Mapping[str, Any]]) -> str:
    """The rows of a history as CSV text (columns in :func:`metric_columns` order)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=metric_columns(history), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


class StageLog:
    """The :class:`~csdn.train.loop.EpochObserver` of one stage: forwards to its :class:`RunFolder`."""

    def __init__(self, folder: RunFolder, name: str) -> None:
        self.folder, self.name = folder, name

    def started(self, run_dir: Path, start: int, history: list[dict[str, float]], epochs: int) -> None:
        self.folder.stage_started(self.name, run_dir, start, history, epochs)

    def epoch_done(self, metrics: dict[str, float], epochs: int) -> None:
        self.folder.epoch_done(self.name, metrics, epochs)


def format_seconds(seconds: float) -> str:
    """A duration for people: ``40 s``, ``8 min``, ``1 h 38 min``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class ProgressLines:
    """The :class:`~csdn.experiment.RunObserver` of a notebook: a few printed lines per stage, which stay in a
    saved or exported notebook (a progress bar is gone once it closes): where a stage starts (or resumes),
    about ``lines`` of its epochs with the loss, the last validation and the time left, and when it is done or
    loaded from the cache. ``label`` names the run (``"CSDN"``, ``"vision-only"``)."""

    def __init__(self, label: str = "", lines: int = 8, echo: Callable[[str], None] = print) -> None:
        self.prefix = f"{label}: " if label else ""
        self.lines, self.echo = max(1, lines), echo

    def stage(self, name: str) -> _StageLines:
        return _StageLines(self, name)

    def stage_done(self, name: str, run_dir: Path, history: list[dict[str, float]], loaded: bool) -> None:
        if loaded:
            self.echo(f"{self.prefix}{name} loaded from the cache ({len(history)} epochs)")
        else:
            took = format_seconds(sum(row.get("seconds", 0.0) for row in history))
            self.echo(f"{self.prefix}{name} done: {len(history)} epochs, {took} of training")


class _StageLines:
    """The loop observer of one stage of :class:`ProgressLines`."""

    def __init__(self, owner: ProgressLines, name: str) -> None:
        self.owner, self.name = owner, name
        self.start, self.every, self.t0, self.validation = 0, 1, time.perf_counter(), ""

    def started(self, run_dir: Path, start: int, history: list[dict[str, float]], epochs: int) -> None:
        self.start, self.every, self.t0 = start, -(-epochs // self.owner.lines), time.perf_counter()
        where = f"resuming at epoch {start + 1} of {epochs} (checkpoint)" if start else f"training {epochs} epochs"
        self.owner.echo(f"{self.owner.prefix}{self.name} {where}")

    def epoch_done(self, metrics: dict[str, float], epochs: int) -> None:
        epoch = int(metrics["epoch"])
        if "val_mAP" in metrics:
            self.validation = f", validation mAP {100 * metrics['val_mAP']:.1f}% (epoch {epoch})"
        if epoch % self.every and epoch != epochs:
            return
        per_epoch = (time.perf_counter() - self.t0) / max(1, epoch - self.start)
        left = f", about {format_seconds((epochs - epoch) * per_epoch)} left" if epoch < epochs else ""
        loss = f"loss {metrics['loss']:.4g}" if "loss" in metrics else "done"
        self.owner.echo(
            f"{self.owner.prefix}{self.name} epoch {epoch}/{epochs}: {loss}{self.validation}; "
            f"{metrics.get('seconds', per_epoch):.1f} s an epoch{left}"
        )


class PrefixedStages:
    """The :class:`~csdn.experiment.RunObserver` of a second run written into the same :class:`RunFolder` (the
    baseline of ``csdn demo``): its stages are filed as ``<prefix>-<stage>`` (log lines, CSV, TensorBoard, links),
    so they never mix with the main run's."""

    def __init__(self, folder: RunFolder, prefix: str) -> None:
        self.folder, self.prefix = folder, prefix

    def stage(self, name: str) -> StageLog:
        return self.folder.stage(f"{self.prefix}-{name}")

    def stage_done(self, name: str, run_dir: Path, history: list[dict[str, float]], loaded: bool) -> None:
        self.folder.stage_done(f"{self.prefix}-{name}", run_dir, history, loaded)


class RunFolder:
    """A run's folder (see the module docstring); ``echo`` also gets every log line."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.echo = echo
        self.histories: dict[str, list[dict[str, float]]] = {}
        self._logged: dict[str, set[int]] = {}  # epochs of each stage already in TensorBoard
        self._writer: Any = None
        self._tensorboard_off = False
        self._lock: FileLock | None = None
        self._provenance: dict[str, Any] = {}

    # -- the run ------------------------------------------------------------------------------------

    def start(
        self,
        command: str,
        cfg: ExperimentConfig,
        overrides: Mapping[str, Any],
        argv: list[str],
        cache: Path,
        weights: tuple[Path, str] | None = None,
    ) -> None:
        """Claim the folder for this run (see the module docstring) and log the run's first line.

        ``weights``: the file a ``csdn eval`` evaluates and its digest; None for the cache's network of ``cfg``.
        Raises :class:`~csdn.errors.ConfigError` when the folder cannot be created, is not a csdn run folder,
        belongs to another run or is being written by another process.
        """
        import torch

        from csdn import __version__

        identity = {"config": config_key(to_dict(cfg)), "weights": weights[1] if weights else None}
        description = describe(cfg) + (f", weights {weights[0]} (blake2b {weights[1][:8]})" if weights else "")
        self._claim(identity, description, to_dict(cfg))
        try:  # up front, not after a stage has trained
            check_folder(self.path / TENSORBOARD, f"run folder {self.path}: its {TENSORBOARD} folder")
        except BaseException:
            self.close()
            raise
        self._provenance = {
            "config.json": to_dict(cfg),
            "overrides.json": dict(overrides),
            "version.json": {
                "csdn": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "command": shlex.join(["csdn", *argv]),
                "cache": str(Path(cache).resolve()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        }
        self.line(f"csdn {command} ({describe(cfg)}) into run folder {self.path}")

    def _claim(self, identity: dict[str, Any], description: str, config: dict[str, Any]) -> None:
        """Create or reuse the folder for the run ``identity``, and lock it; :class:`ConfigError` if not ours."""
        self._refuse_foreign(description, config)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create the run folder {self.path} ({error}); choose another with --out"
            ) from error
        lock = FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout as error:
            raise ConfigError(
                f"{self.path}: another csdn command is writing this run folder now; wait until it ends, or "
                "choose another --out"
            ) from error
        try:
            self._refuse_foreign(description, config)  # (again, under the lock)
            marker = _read_json_or_none(self.path / MARKER)
            if marker is not None and not isinstance(marker, dict):
                raise ConfigError(f"{self.path / MARKER}: not a run folder marker of csdn; choose another --out")
            if marker and marker.get("identity") != identity:
                if (self.path / "results.json").is_file():
                    raise ConfigError(
                        f"{self.path}: the run folder of another run ({marker.get('run')}); this one "
                        f"({description}) needs its own: choose another --out, or leave --out out for a folder "
                        "named after the run"
                    )
                self._clear_stages()  # another run that never finished: the folder is free, its stage files go
            if not marker or marker.get("identity") != identity:
                atomic_write_json(self.path / MARKER, {"identity": identity, "run": description})
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def _refuse_foreign(self, description: str, config: dict[str, Any]) -> None:
        """:class:`ConfigError` when the folder exists and holds files but is not a run folder of this run.

        A run folder of a csdn without the marker is this run's when its ``config.json`` is this config.
        """
        if not self.path.is_dir() or (self.path / MARKER).is_file():
            return
        held = sorted(p.name for p in self.path.iterdir() if p.name not in (LOCK, MARKER))
        if not held:
            return
        if not _earlier_run_folder(self.path):
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise ConfigError(
                f"{self.path}: exists and is not a csdn run folder (it holds {shown}); csdn writes only into "
                "its own run folders: choose another --out (a new or empty folder)"
            )
        if _read_json_or_none(self.path / "config.json") != json.loads(json.dumps(config, default=str)):
            raise ConfigError(
                f"{self.path}: the run folder of another configuration (its config.json); this one ({description}) "
                "needs its own: choose another --out, or leave --out out for a folder named after the run"
            )

    def _clear_stages(self) -> None:
        """Remove the stage files (CSV, link, listing) and event files an unfinished earlier run left."""
        listing = self.path / f"{STAGES}.json"
        for name in _read_json_or_none(listing) or {}:
            (self.path / f"{name}.csv").unlink(missing_ok=True)
            if (self.path / STAGES / name).is_symlink():
                (self.path / STAGES / name).unlink()
        listing.unlink(missing_ok=True)
        for old in (self.path / TENSORBOARD).glob("events.out.tfevents.*"):
            old.unlink()

    def _write_provenance(self) -> None:
        """The config, overrides and versions of this run (beside the results it just wrote)."""
        for name, content in self._provenance.items():
            if name == "version.json":
                content = {**content, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write_json(self.path / name, content)

    def finished(self, write_results: Callable[[], Any]) -> Any:
        """Write the results (``write_results()``, returned) and then the provenance that describes them."""
        written = write_results()
        self._write_provenance()
        return written

    def line(self, text: str, echo: bool = True) -> None:
        """Append a time-stamped line to the log (and pass it to ``echo`` unless ``echo=False``)."""
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        with open(self.path / LOG, "a", encoding="utf-8") as log:
            log.write(stamped + "\n")
        if echo and self.echo is not None:
            self.echo(text)

    def failed(self, error: BaseException) -> None:
        """Log why the run stopped (in the file only: the CLI prints the error itself)."""
        self.line(f"stopped: {type(error).__name__}: {error}", echo=False)

    def close(self) -> None:
        """Flush and close the TensorBoard event file; release the folder."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- stages (the Experiment's RunObserver) ------------------------------------------------------

    def stage(self, name: str) -> StageLog:
        """The loop observer of stage ``name`` (about to train)."""
        self.histories[name] = []
        return StageLog(self, name)

    def stage_started(self, name: str, run_dir: Path, start: int, history: list[dict[str, float]], epochs: int) -> None:
        """Stage ``name`` starts training at epoch ``start``; a resumed one's earlier epochs are logged first."""
        if not start:
            self.line(f"{name}: training {epochs} epoch(s) in {run_dir}")
            return
        self.line(f"{name}: resuming from epoch {start} of {epochs} (checkpoint in {run_dir})")
        for row in history:
            self.line(f"{name} epoch {int(row['epoch'])}/{epochs} {format_metrics(row)} (checkpoint)", echo=False)
        self.histories[name] = [dict(row) for row in history]
        self._write_csv(name, history)
        self._scalars(name, history)  # in epoch order: TensorBoard drops steps written out of order

    def epoch_done(self, name: str, metrics: dict[str, float], epochs: int) -> None:
        """Log an epoch of stage ``name``: a line, a CSV row, its scalars."""
        self.line(f"{name} epoch {int(metrics['epoch'])}/{epochs} {format_metrics(metrics)}")
        rows = self.histories.setdefault(name, [])
        rows.append(dict(metrics))
        self._write_csv(name, rows)
        self._scalars(name, [metrics])

    def stage_done(self, name: str, run_dir: Path, history: list[dict[str, float]], loaded: bool) -> None:
        """Stage ``name`` is complete: its whole history to the CSV and TensorBoard, a link to ``run_dir``."""
        if loaded:
            self.line(f"{name}: loaded from cache ({len(history)} epochs) from {run_dir}")
            for row in history:  # in the log file only: the terminal gets the one line above
                self.line(f"{name} epoch {int(row['epoch'])}/{len(history)} {format_metrics(row)} (cached)", echo=False)
        else:
            self.line(f"{name}: done ({len(history)} epochs) in {run_dir}")
        self.histories[name] = [dict(row) for row in history]
        self._write_csv(name, history)
        self._scalars(name, history)
        self._link(name, Path(run_dir), loaded, len(history))

    # -- files --------------------------------------------------------------------------------------

    def _write_csv(self, name: str, history: list[Mapping[str, Any]]) -> None:
        atomic_write_bytes(self.path / f"{name}.csv", history_csv(history).encode())

    def _scalars(self, name: str, rows: list[Mapping[str, Any]]) -> None:
        """Add each row's metrics as ``<stage>/<metric>`` at its epoch, once per epoch."""
        writer = self._tensorboard()
        if writer is None:
            return
        logged = self._logged.setdefault(name, set())
        for row in rows:
            epoch = int(row["epoch"])
            if epoch in logged:
                continue
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(f"{name}/{key}", float(value), epoch)
            logged.add(epoch)
        writer.flush()

    def _tensorboard(self) -> Any:
        """The event-file writer, or None (with one log line) when the tensorboard package is missing."""
        if self._writer is None and not self._tensorboard_off:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tensorboard_off = True
                self.line("TensorBoard logging is off: the tensorboard package is missing (pip install tensorboard)")
                return None
            for old in (self.path / TENSORBOARD).glob("events.out.tfevents.*"):
                old.unlink()  # this run's event files replace the last run's (scalars would repeat otherwise)
            self._writer = SummaryWriter(log_dir=str(self.path / TENSORBOARD))
        return self._writer

    def _link(self, name: str, run_dir: Path, loaded: bool, epochs: int) -> None:
        """Link ``stages/<name>`` to ``run_dir`` (a symlink where the file system allows) and list it."""
        target = run_dir.resolve()
        listing_path = self.path / f"{STAGES}.json"
        listing = _read_json(listing_path)
        entry = {"path": str(target), "loaded_from_cache": loaded, "epochs": epochs, "link": None}
        link = self.path / STAGES / name
        try:
            link.parent.mkdir(exist_ok=True)
            temporary = link.with_name(f".{name}.{os.getpid()}.tmp")
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(target, target_is_directory=True)
            os.replace(temporary, link)
            entry["link"] = str(link.relative_to(self.path))
        except OSError as error:  # e.g. no symlinks on this file system: the listing still names the folder
            self.line(f"{name}: no symbolic link ({error}); see {listing_path.name}")
        listing[name] = entry
        atomic_write_json(listing_path, listing)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_json_or_none(path: Path) -> Any:
    """The JSON in ``path``; None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _earlier_run_folder(path: Path) -> bool:
    """A run folder a csdn without the marker wrote (its version.json records a csdn command)."""
    version = _read_json_or_none(path / "version.json")
    return isinstance(version, dict) and str(version.get("command", "")).startswith("csdn ")
