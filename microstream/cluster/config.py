"""Configuration files for the long-running processes: `microstream agent --config FILE` and `microstream
coordinator --config FILE` read TOML (what the systemd units start them with, see docs/deploy.md).

One file per process, flat keys named like the command-line options (`metrics_bind` for `--metrics-bind`), labels
as a table::

    # /etc/microstream/agent.toml
    name = "pi07"
    coordinator = "tcp://10.0.0.2:7077"      # or: beacon = true (find it on the LAN)
    labels = { site = "library", floor = "2" }
    keys = "/etc/microstream/keys"            # key directory; key = this node's key name in it (default: name)
    coordinator_key = "/etc/microstream/keys/coordinator.key"
    data_host = "10.0.0.17"                   # where other nodes reach this one's channels (default: found)
    metrics_bind = "0.0.0.0"
    work_dir = "/var/lib/microstream/agent"
    memory_limit = "300M"

Options given on the command line override the file. A key the process does not take, or a value of the wrong
type, is a `ConfigError` naming the key and the file (the command exits 2). Relative paths in a file are relative to
the file's directory.

`to_toml` writes the same flat shape back (key bundles carry an agent's configuration, service install writes the
installed copy).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import MicrostreamError

AGENT = "agent"
COORDINATOR = "coordinator"


class ConfigError(MicrostreamError):
    """A configuration file that cannot be used: the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Key:
    """One configuration key: its type ("str", "int", "float", "bool", "path", "size", "labels") and the option's
    destination on the command line's parser (`dest`), and what it is for (shown in errors)."""

    kind: str
    dest: str
    help: str


_COMMON = {
    "keys": Key("path", "keys", "key directory (NAME.key_secret, trusted/, coordinator.key)"),
    "key": Key("str", "key", "this process's key: a name in the key directory, or a NAME.key_secret file"),
    "metrics_bind": Key("str", "metrics_bind", "address the metrics port listens on"),
    "metrics_port": Key("int", "metrics_port", "Prometheus metrics port (0: any free port)"),
    "beacon": Key("bool", "beacon", "multicast beacon on the LAN"),
    "interface": Key("str", "interface", "network interface (its address) for the beacon"),
    "beacon_port": Key("int", "beacon_port", "UDP port of the beacon"),
    "memory_limit": Key("size", "memory_limit", "memory this process (and an agent's hosts) may use, e.g. \"300M\""),
    "insecure": Key("bool", "insecure", "plaintext ZeroMQ, no authentication (closed test networks only)"),
    "home": Key("path", "home", "cluster home (default ~/.microstream)"),
}

SCHEMAS: dict[str, dict[str, Key]] = {
    AGENT: {
        "name": Key("str", "name", "this node's name"),
        "labels": Key("labels", "label", "labels, a table: labels = { site = \"library\" }"),
        "coordinator": Key("str", "coordinator", "coordinator address tcp://HOST:PORT (or beacon = true)"),
        "coordinator_key": Key("path", "coordinator_key", "the coordinator's public key file"),
        "data_host": Key("str", "data_host", "address other nodes reach this node's channels on"),
        "work_dir": Key("path", "work_dir", "directory for the hosts' sockets and logs (a private subdirectory per "
                                            "run, removed at stop)"),
        "coordinator_timeout": Key("float", "coordinator_timeout", "seconds of silence before registering again"),
        "replica_dir": Key("path", "replica_dir", "where the coordinator's checkpoint replicas are kept"),
        "discover_timeout": Key("float", "discover_timeout", "seconds to wait for a beacon"),
        **_COMMON,
    },
    COORDINATOR: {
        "bind": Key("str", "bind", "address to listen on, e.g. tcp://0.0.0.0:7077"),
        "state_dir": Key("path", "state_dir", "where jobs, placements and checkpoints persist (SQLite)"),
        "checkpoint_dir": Key("path", "checkpoint_dir", "also write every completed checkpoint here"),
        "checkpoint_replicas": Key("int", "checkpoint_replicas", "agents that keep a copy of every checkpoint"),
        "node": Key("str", "node", "the agent on this coordinator's machine (replicas go elsewhere first)"),
        "topology": Key("path", "topology", "a topology TOML file for placement"),
        "agent_timeout": Key("float", "agent_timeout", "seconds without a heartbeat before an agent is lost"),
        "adopt_grace": Key("float", "adopt_grace", "seconds a restarted coordinator waits for hosts to be reported"),
        "keep_jobs": Key("int", "keep_jobs", "ended jobs kept in memory for status"),
        "max_message": Key("float", "max_message", "largest message accepted, in MB"),
        "auto_place": Key("bool", "auto_place", "move virtual nodes on its own (default true)"),
        "min_gain": Key("float", "min_gain", "cross-node bytes/s a move must save"),
        **_COMMON,
    },
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from an int or a text with a unit: "300M", "1.5G", "512MiB", "65536" (units are powers of 1024).

    >>> parse_size("300M"), parse_size("1G"), parse_size(4096)
    (314572800, 1073741824, 4096)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (write e.g. \"300M\" or \"1G\")")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index((m.group(2) or "_").upper()))


def format_size(n: int) -> str:
    """The shortest exact text for a size `parse_size` reads back.

    >>> format_size(314572800), format_size(1 << 30), format_size(1000)
    ('300M', '1G', '1000')
    """
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n and n % 1024 ** power == 0:
            return f"{n // 1024 ** power}{unit}"
    return str(n)


def load(path: Path | str, role: str) -> dict[str, Any]:
    """The configuration in `path` for `role` (AGENT or COORDINATOR): key -> checked value (paths absolute,
    sizes in bytes, labels a dict). Raises ConfigError naming the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return check(data, role, path)


def check(data: Mapping[str, Any], role: str, path: Path | str = "<config>") -> dict[str, Any]:
    """Check a parsed configuration (`load` without the file): unknown keys and wrong types raise ConfigError."""
    schema = SCHEMAS[role]
    base = Path(path).resolve().parent if str(path) != "<config>" else Path.cwd()
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = schema.get(name)
        if key is None:
            close = difflib.get_close_matches(name, schema, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = "table" if isinstance(value, dict) else "key"
            raise ConfigError(f"config file {path}: unknown {where} '{name}'{hint}; the {role}'s keys are: "
                              f"{', '.join(sorted(schema))}")
        out[name] = _value(key, name, value, path, base)
    if role == AGENT and out.get("coordinator") and out.get("beacon"):
        raise ConfigError(f"config file {path}: give 'coordinator' or 'beacon = true', not both")
    return out


def _value(key: Key, name: str, value: Any, path: Path | str, base: Path) -> Any:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"config file {path}: key '{name}' must be {expected}, not {value!r} ({key.help})")

    if key.kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if key.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if key.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    if key.kind == "size":
        try:
            if isinstance(value, bool):
                raise ValueError
            return parse_size(value)
        except ValueError:
            raise wrong("a size such as \"300M\" or \"1G\"") from None
    if key.kind == "labels":
        if not isinstance(value, dict) or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                                                  for v in value.values()):
            raise wrong("a table of texts, e.g. labels = { site = \"library\" }")
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str) or not value:
        raise wrong("a non-empty text")
    if key.kind == "path":
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else base / p)
    return value


def as_arguments(config: Mapping[str, Any], role: str) -> dict[str, Any]:
    """Checked configuration values as the command line's parser stores them (`parser.set_defaults(**...)`)."""
    schema = SCHEMAS[role]
    out: dict[str, Any] = {}
    for name, value in config.items():
        key = schema[name]
        if key.kind == "labels":
            value = [f"{k}={v}" for k, v in value.items()]
        if name == "auto_place":
            out["no_auto_place"] = not value
            continue
        if name == "beacon" and role == AGENT:
            continue  # an agent without a coordinator address looks for a beacon anyway
        out[key.dest] = Path(value) if key.kind == "path" else value
    return out


def to_toml(config: Mapping[str, Any], comments: Mapping[str, str] | None = None) -> str:
    """Flat TOML for a configuration of str, int, float, bool and one level of tables (labels); `comments` are
    put at the end of their key's line."""
    lines = []
    for name, value in config.items():
        line = f"{name} = {_toml_value(value)}"
        if comments and name in comments:
            line += f"  # {comments[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else _toml_value(key)
