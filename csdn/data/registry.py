"""The registry of datasets: config / CLI name -> reader class.

Everything that needs to know which datasets exist reads it: :class:`csdn.config.DataConfig` (its
``dataset`` choices), the CLI (``--dataset``), SynthVI's layout writers, and :mod:`csdn.sources` (which
opens the reader). Nothing else branches on a dataset's name or class: the rest of the package uses the
reader contract of :mod:`csdn.data.protocol`.

Adding a dataset:

1. Write its reader in a new module ``csdn/data/<name>.py``: a class with ``title`` and ``rules``
   (:class:`~csdn.data.protocol.GalleryRules`), ``open(root, data)``, ``train``, ``validation()``
   and ``test_splits(options)``, reporting malformed input as :class:`~csdn.data.protocol.DatasetError`
   (see :class:`~csdn.data.protocol.Reader`; :mod:`csdn.data.llcm` is a short example).
2. Add one line to :data:`DATASETS` below.

It is then a ``DataConfig(dataset=...)`` choice and a ``csdn --dataset`` choice, it trains and is
evaluated by every command and notebook, and its results are labelled with its ``title``. Optionally,
write a SynthVI layout for it (:data:`csdn.synthvi.layouts.WRITERS`) so that the embedded world can be
read in its layout.
"""

from __future__ import annotations

from csdn.data.llcm import LLCM
from csdn.data.protocol import Reader
from csdn.data.regdb import RegDB
from csdn.data.sysu import SYSUMM01

DATASETS: dict[str, type[Reader]] = {
    "sysu": SYSUMM01,
    "regdb": RegDB,
    "llcm": LLCM,
}


def reader_class(name: str) -> type[Reader]:
    """The reader class registered as ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {', '.join(DATASETS)}")
    return DATASETS[name]
