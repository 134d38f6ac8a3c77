"""Machines on loopback for the deployment tests: each "machine" is a directory used as its HOME, command lines run
there with bash (so `~` is that machine's home), long-running ones (`microstream coordinator`, `microstream agent`)
in the background with their log in the machine's directory. Shared by tests/cluster/test_deploy.py."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = str(Path(sys.executable).parent)
ROOT = Path(__file__).resolve().parents[2]
LONG_RUNNING = ("microstream coordinator", "microstream agent")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (by parent pid, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Machines:
    """Named machines under `root`; `run(machine, line)` runs a command line there."""

    def __init__(self, root: Path, substitutions: dict[str, str] | None = None) -> None:
        self.root = root
        self.substitutions = substitutions or {}
        self.background: dict[str, subprocess.Popen] = {}   # "machine: command" -> process
        self.logs: dict[str, Path] = {}

    def home(self, machine: str) -> Path:
        path = self.root / machine
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, machine: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSTREAM_")}
        env.update(HOME=str(self.home(machine)), PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
                   MICROSTREAM_BACKENDS="process", PYTHONPATH=str(ROOT))  # the checkout under test
        return env

    def substitute(self, line: str) -> str:
        for old, new in self.substitutions.items():
            line = re.sub(old, new, line)
        return line

    def run(self, machine: str, line: str, timeout: float = 180) -> subprocess.CompletedProcess | subprocess.Popen:
        """Run `line` (after the substitutions) on `machine`: to its end, or in the background for a coordinator or
        an agent (returns the Popen, its output in `logs[...]`)."""
        line = self.substitute(line)
        if line.startswith(LONG_RUNNING):
            log = self.home(machine) / f"{line.split()[1]}.log"
            proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.home(machine), env=self.env(machine),
                                    stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child's
                                    start_new_session=True)
            self.background[f"{machine}: {line}"] = proc
            self.logs[f"{machine}: {line}"] = log
            return proc
        done = subprocess.run(["bash", "-c", line], cwd=self.home(machine), env=self.env(machine),
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{machine}$ {line}\n{done.stdout}\n{done.stderr}\n{self.tail()}"
        return done

    def start_unit(self, machine: str, unit: Path) -> subprocess.Popen:
        """Start what a systemd unit's ExecStart says, with its Environment (but numba's cache where it is: a fresh
        one would compile every kernel again, minutes on this machine), as the service manager would."""
        env = self.env(machine)
        command = None
        cwd = self.home(machine)
        for raw in unit.read_text().splitlines():
            key, _, value = raw.partition("=")
            if key == "ExecStart":
                command = shlex.split(value)
            elif key == "WorkingDirectory":
                cwd = Path(value)
            elif key == "Environment" and not value.startswith("NUMBA_CACHE_DIR="):
                name, _, setting = value.partition("=")
                env[name] = setting
        assert command, f"no ExecStart in {unit}"
        log = self.home(machine) / f"{unit.stem}.log"
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=open(log, "ab"),  # noqa: SIM115
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.background[f"{machine}: {unit.name}"] = proc
        self.logs[f"{machine}: {unit.name}"] = log
        return proc

    def tail(self, lines: int = 15) -> str:
        out = []
        for name, log in self.logs.items():
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            out.append(f"--- {name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def stop(self, proc: subprocess.Popen, timeout: float = 30) -> tuple[int, list[int]]:
        """SIGTERM one background process, as systemd would; its exit code and what it left running."""
        below = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=timeout)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in below) and time.monotonic() < deadline:
            time.sleep(0.05)
        return code, [p for p in below if alive(p)]

    def close(self) -> None:
        for proc in self.background.values():
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def code_block(text: str, after: str) -> list[str]:
    """The lines of the first fenced code block after the line starting with `after`."""
    lines = text[text.index(after):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return lines[start + 1:end]
