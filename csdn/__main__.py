"""``python -m csdn`` (also what ``torchrun -m csdn`` runs)."""

import sys

from csdn.cli import main

sys.exit(main())
