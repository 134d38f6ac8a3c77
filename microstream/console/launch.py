"""Starting the console with a coordinator (its command-line options), and `microstream console`: the address,
with its token, read from the cluster home where the coordinator wrote it (`console.json`, readable by its
owner only, like the keys beside it; removed when the coordinator stops)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .server import Console, ConsoleError

STATE = "console.json"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--console-port", type=int, default=0, metavar="PORT",
                   help="port of the web console (default 0: any free port; `microstream console` prints the "
                        "address with its token)")
    p.add_argument("--console-bind", default="127.0.0.1", metavar="ADDRESS",
                   help="address the web console listens on (default %(default)s: this machine only; it is plain "
                        "HTTP with a token: on a network, prefer an SSH tunnel)")
    p.add_argument("--no-console", action="store_true", help="no web console")


def start_for(coordinator: Any, home: Path, args: argparse.Namespace) -> Console | None:
    """Start the console for `coordinator` (which feeds it) and record its address in `home`; a console that
    cannot start costs a line on stderr, never the coordinator."""
    if args.no_console:
        return None
    console = Console(args.console_bind, args.console_port, allow_remote=True,
                      log=lambda text: print(text, file=sys.stderr, flush=True))
    try:
        url = console.start()
    except ConsoleError as exc:
        print(f"coordinator: no web console: {exc}", file=sys.stderr, flush=True)
        return None
    path = home / STATE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "pid": os.getpid()}, f)
    console.state_file = path
    coordinator.console = console
    print(f"coordinator: web console on http://{console.bind}:{console.port}/ (`microstream console` prints the "
          "address with its token)", file=sys.stderr, flush=True)
    return console


def print_url(home: Path) -> int:
    """`microstream console`: print the running console's address with its token; 1 if there is none."""
    path = home / STATE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"microstream: no web console recorded in {path}: start a coordinator with this home "
              "(`microstream cluster up`, or `microstream coordinator --home DIR`); it serves one unless "
              "--no-console", file=sys.stderr)
        return 1
    if not _alive(int(state.get("pid", 0))):
        print(f"microstream: the coordinator that wrote {path} (pid {state.get('pid')}) is not running; start it "
              "again", file=sys.stderr)
        return 1
    print(state["url"])
    return 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
