"""``python -m csdn`` (also what ``torchrun -m csdn`` runs)."""

import sys

try:
    from csdn.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: nothing started, nothing to resume
    print("csdn: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
