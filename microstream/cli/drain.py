"""`microstream drain NODE` and `microstream undrain NODE` (alias `uncordon`): maintenance without downtime.

`drain` asks the coordinator to cordon NODE and move its virtual nodes off (`cluster/drain.py`), then follows the
drain, printing each move as it is done: exit 0 once nothing that has not finished runs on NODE, 1 with the reasons
when something cannot move (a pinned source) or the wait times out (the drain goes on in the coordinator either
way; Ctrl-C only stops watching). `undrain` returns NODE to service. docs/maintenance.md has the rolling upgrade.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from .script import seconds

EXIT_OK, EXIT_FAILED = 0, 1
POLL = 0.25   # seconds between two looks at the drain


def add_parsers(sub: Any, cluster_options: Callable[[argparse.ArgumentParser], None],
                address: Callable[[argparse.Namespace], Any]) -> None:
    """The `drain` and `undrain` verbs (`cluster_options` and `address`: the main parser's, for --coordinator,
    --key, --home...)."""
    p = sub.add_parser("drain", help="move every virtual node off NODE (live, one at a time) and place nothing new "
                                     "there, for maintenance; `undrain NODE` returns it to service",
                       description="Cordon NODE and move its virtual nodes off it with live migration, one at a "
                                   "time, to where the placement engine puts them. Exit 0 when drained, 1 when "
                                   "something cannot move (a pinned source says why) or --timeout passes.")
    p.add_argument("node", help="the agent's name (see `microstream status`)")
    p.add_argument("--timeout", type=seconds, default=600.0, metavar="S",
                   help="stop waiting after S seconds (default %(default)g; the drain goes on)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the outcome")
    cluster_options(p)
    p.set_defaults(fn=lambda args: cmd_drain(args, address))

    p = sub.add_parser("undrain", aliases=["uncordon"], help="return a drained NODE to service (new work may be "
                                                             "placed there again)")
    p.add_argument("node", help="the agent's name")
    cluster_options(p)
    p.set_defaults(fn=lambda args: cmd_undrain(args, address))


def cmd_drain(args: argparse.Namespace, address: Callable[[argparse.Namespace], Any]) -> int:
    from ..cluster.client import Client

    say = (lambda _: None) if args.quiet else print
    with Client(address(args)) as client:
        drain = client.drain(args.node)
        left = len(drain["left"])
        say(f"draining {args.node}: nothing new is placed there; {left} virtual node{'s' * (left != 1)} to move off")
        try:
            drain = follow(client, args.node, drain, args.timeout, say)
        except KeyboardInterrupt:
            print(f"microstream: stopped watching; the drain of {args.node} goes on (`microstream status`)",
                  file=sys.stderr)
            return 130
    return outcome(drain, args.timeout)


def follow(client: Any, node: str, drain: dict[str, Any], timeout: float,
           say: Callable[[str], None]) -> dict[str, Any]:
    """Print each move as the coordinator reports it done, until the drain is over or `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    shown = 0
    waiting: dict[str, str] = {}
    while True:
        for move in drain["moved"][shown:]:
            held = f", inputs held {move['downtime_s'] * 1000:.0f} ms" if move.get("downtime_s") is not None else ""
            total = f" in {move['total_s']:.2f} s" if move.get("total_s") is not None else ""
            say(f"  moved {move['job']}/{move['vnode']} {move['from']} -> {move['to']}{total}{held}")
        shown = len(drain["moved"])
        if drain["waiting"] != waiting:
            for key, why in sorted(drain["waiting"].items()):
                if waiting.get(key) != why:
                    say(f"  {key} waits: {why}")
            waiting = drain["waiting"]
        if drain["state"] != "draining" or time.monotonic() >= deadline:
            return drain
        time.sleep(POLL)  # polling the coordinator, not synchronising: the drain runs there
        drain = client.drain(node, action="status")


def outcome(drain: dict[str, Any], timeout: float) -> int:
    node = drain["node"]
    if drain["state"] == "drained":
        print(f"{node} drained: {len(drain['moved'])} virtual node{'s' * (len(drain['moved']) != 1)} moved; nothing "
              f"is placed there until `microstream undrain {node}`")
        return EXIT_OK
    if drain["state"] == "stuck":
        print(f"microstream: {node} is not drained: {len(drain['stuck'])} virtual node"
              f"{'s' * (len(drain['stuck']) != 1)} cannot move:", file=sys.stderr)
    else:
        print(f"microstream: {node} is still draining after {timeout:g} s (it goes on: `microstream status`); "
              f"left: {', '.join(drain['left']) or '-'}", file=sys.stderr)
    for key, why in sorted(drain["stuck"].items()):
        print(f"  {key}: {why}", file=sys.stderr)
    print(f"  {node} stays cordoned (nothing new is placed there); `microstream undrain {node}` returns it to service",
          file=sys.stderr)
    return EXIT_FAILED


def cmd_undrain(args: argparse.Namespace, address: Callable[[argparse.Namespace], Any]) -> int:
    from ..cluster.client import Client

    with Client(address(args)) as client:
        client.drain(args.node, action="undrain")
    print(f"{args.node} is back in service: new work may be placed there")
    return EXIT_OK
