"""`python -m microstream.cli`: the same as the `microstream` command."""

import sys

from .main import main

sys.exit(main())
