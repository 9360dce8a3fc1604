"""The ``csdn`` console script (:mod:`csdn.cli.main`), one module per command group.

:mod:`~csdn.cli.options` builds every command's configuration; :mod:`~csdn.cli.data` has ``synth``, ``stats``
and ``pretrain-clip``; :mod:`~csdn.cli.run` ``train``, ``eval`` and ``demo`` (:mod:`~csdn.cli.trials` their
``--trial all``); :mod:`~csdn.cli.weights` the weights files they read and ``convert-release``;
:mod:`~csdn.cli.studies` ``ablate`` and ``gap``; :mod:`~csdn.cli.networks` ``embed`` and ``heatmaps``.
"""

from csdn.cli.main import build_parser, main
from csdn.cli.options import FLAG_OVERRIDES, experiment_config
from csdn.cli.run import run_folder_path
from csdn.cli.weights import apply_weights_settings

__all__ = ["FLAG_OVERRIDES", "apply_weights_settings", "build_parser", "experiment_config", "main", "run_folder_path"]
