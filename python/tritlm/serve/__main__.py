"""``python -m tritlm.serve``."""

import sys

from .cli import main

sys.exit(main())
