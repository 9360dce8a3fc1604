"""``python -m csdn.cli`` (the same as ``python -m csdn``)."""

import sys

from csdn.cli import main

sys.exit(main())
