"""The `microstream` command line: `main.py` (the verbs and their parser), `placement.py` (`plan`, `topology`),
`script.py` (loading a user's pipeline script). The console script is `microstream.cli:main`."""

from .main import main

__all__ = ["main"]
