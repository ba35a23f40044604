"""``python -m clustermesh.cli``."""

import sys

from . import main

sys.exit(main())
