"""`python -m nufilt ...`: see `nufilt.cli`."""

import sys

from .cli import main

sys.exit(main())
