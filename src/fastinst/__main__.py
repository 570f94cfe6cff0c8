"""`python -m fastinst ...` (also what `torchrun -m fastinst train ...` runs)."""

import sys

from .cli import main

sys.exit(main())
