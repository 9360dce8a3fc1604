"""One :class:`Experiment` runs dataset -> CLIP -> stage 1 -> stage 2 -> stage 3 -> evaluation.

Every stage's result is cached on disk under the artifact cache, keyed by the configuration that
produced it (and the keys of the stages before it), so notebooks and the CLI share the work: a
notebook run alone computes what it needs, a second one reuses it. A stage in progress holds a file
lock (two processes needing it compute it once) and checkpoints every epoch (a killed run resumes).

Under torchrun (a :class:`~csdn.train.distributed.DistContext` with several ranks) every rank builds the
same Experiment: stages 1 and 3 train under DDP, only rank 0 writes the cache, and feature extraction
splits the images over the ranks and gathers the features in order. The ranks share one cache folder.

A ``logger`` (a :class:`RunObserver`, e.g. the CLI's :class:`csdn.runs.RunFolder`) hears, on rank 0, each
stage's epochs as they train (and where a stage resumes) and each stage's result: trained, or loaded
from the cache with its stored history.
"""

from csdn.experiment.pipeline import Experiment
from csdn.experiment.records import (
    DONE,
    FINAL,
    STAGE3_RECORDED,
    WEIGHTS_SETTINGS,
    check_run_folder,
    check_weights_file,
    config_for_weights,
    load_weights,
    read_done,
    stage3_weights_settings,
    state_dict_mismatch,
    weights_settings,
)
from csdn.experiment.stage_cache import NotTrainedError, RunObserver

__all__ = [
    "DONE",
    "FINAL",
    "STAGE3_RECORDED",
    "WEIGHTS_SETTINGS",
    "Experiment",
    "NotTrainedError",
    "RunObserver",
    "check_run_folder",
    "check_weights_file",
    "config_for_weights",
    "load_weights",
    "read_done",
    "stage3_weights_settings",
    "state_dict_mismatch",
    "weights_settings",
]
