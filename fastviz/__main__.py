"""``python -m fastviz``: the ``fastviz`` command line."""

import sys

from .cli import main

sys.exit(main())
