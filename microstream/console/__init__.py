"""The live web console, served by the coordinator (docs/console.md): cluster map, each job's DAG with live
rates, the placement with measured traffic, a timeline of moves, checkpoints and recoveries, dead letters."""

from .launch import add_options, print_url, start_for
from .server import Console, ConsoleError, is_loopback

__all__ = ["Console", "ConsoleError", "add_options", "is_loopback", "print_url", "start_for"]
