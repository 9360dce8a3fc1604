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
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from csdn.artifacts import check_folder, default_cache_root, storage_error
from csdn.cli import data, networks, run, studies, weights
from csdn.cli.options import EPILOG
from csdn.errors import CsdnError

EXIT_BAD_INPUT = 2  # exit status of a CsdnError (and of argparse's usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
EXIT_TERMINATED = 143  # SIGTERM, as a shell reports it
# each module's add_commands, in the order the commands are listed (synth ... heatmaps)
COMMAND_GROUPS = (data, run, weights, studies, networks)


def build_parser() -> argparse.ArgumentParser:
    """The ``csdn`` parser: ``--cache`` and every subcommand (``--cache`` also after the command)."""
    parser = argparse.ArgumentParser(prog="csdn", description=__doc__, epilog=EPILOG)
    parser.add_argument(
        "--cache", type=Path, default=None, help="artifact cache root (default $CSDN_CACHE or ~/.cache/csdn)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    for p in sub.choices.values():  # --cache after the command too; SUPPRESS keeps the one given before it
        p.add_argument("--cache", type=Path, default=argparse.SUPPRESS, help="artifact cache root (as csdn --cache)")
    return parser


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
