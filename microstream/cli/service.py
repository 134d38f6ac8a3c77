"""`microstream service install agent|coordinator --config FILE`: systemd units for a machine of the cluster.

It installs the configuration as /etc/microstream/ROLE.toml (paths made absolute, the work or state directory
filled in), writes /etc/systemd/system/microstream-ROLE.service, creates the dedicated user (`--user`, default
microstream) with its directories under /var/lib/microstream, hands it the key files, and enables and starts the
unit (`--no-enable`: not). The unit restarts the process on failure, runs it as that user and confines it
(`ProtectSystem=strict` with only its own directories writable, `NoNewPrivileges`, `PrivateTmp`, `ProtectHome`,
no capabilities...). `MemoryDenyWriteExecute` is left out on purpose: numba compiles kernels into executable memory.

`--root DIR` writes the same files under DIR (an SD card's root file system mounted there: the unit still refers to
/etc and /var/lib), creating no user and starting nothing; `--prefix DIR` relocates everything under DIR, the unit's
paths too (what the tests run: the unit's ExecStart line works as it is on this machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from ..cluster import config as cfg
from ..cluster.config import ConfigError
from .script import EXIT_FAILED, EXIT_OK, EXIT_USAGE

ROLES = (cfg.AGENT, cfg.COORDINATOR)
DESCRIPTION = {cfg.AGENT: "microstream agent: runs the virtual nodes placed on this machine",
               cfg.COORDINATOR: "microstream coordinator: jobs, placement, checkpoints of the cluster"}
HIDDEN = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")  # what ProtectHome and PrivateTmp hide from the unit


def unit_name(role: str) -> str:
    return f"microstream-{role}.service"


class Layout:
    """Where things go: `write` is where files are written (/, --root or --prefix), `base` what the unit and the
    configuration refer to (/ or --prefix)."""

    def __init__(self, root: Path | None = None, prefix: Path | None = None) -> None:
        self.write = Path(prefix or root or "/").resolve()
        self.base = Path(prefix or "/").resolve()
        self.relocated = prefix is not None

    def ref(self, path: str) -> Path:
        """A path as the unit and the configuration name it (/etc/..., or under --prefix)."""
        return self.base / path.lstrip("/")

    def on_disk(self, ref: Path | str) -> Path:
        """Where a path named by the unit is written now (under --root when there is one)."""
        ref = Path(ref)
        if self.write == self.base or not ref.is_relative_to(self.base):
            return ref
        return self.write / ref.relative_to(self.base)

    @property
    def real(self) -> bool:
        return self.write == Path("/")


def settle(settings: dict[str, Any], role: str, layout: Layout) -> dict[str, Any]:
    """The configuration as installed: its directories filled in under /var/lib/microstream, its keys under
    /etc/microstream/keys unless it says otherwise."""
    out = dict(settings)
    out.setdefault("keys", str(layout.ref("/etc/microstream/keys")))
    if role == cfg.AGENT:
        out.setdefault("work_dir", str(layout.ref("/var/lib/microstream/agent")))
    else:
        out.setdefault("state_dir", str(layout.ref("/var/lib/microstream/state")))
    return out


def writable_paths(settings: dict[str, Any], role: str, layout: Layout) -> list[str]:
    """What the unit may write: /var/lib/microstream (home, numba's cache) and the configured work, replica, state
    and checkpoint directories."""
    paths = [str(layout.ref("/var/lib/microstream"))]
    for key in (("work_dir", "replica_dir") if role == cfg.AGENT else ("state_dir", "checkpoint_dir")):
        value = settings.get(key)
        if value and not any(Path(value).is_relative_to(p) for p in paths):
            paths.append(str(value))
    return paths


def unit_text(role: str, config_path: Path, settings: dict[str, Any], layout: Layout, user: str = "microstream",
              python: str | None = None) -> str:
    """The systemd unit that runs `microstream ROLE --config CONFIG_PATH` as `user`, hardened."""
    python = python or sys.executable
    home = layout.ref("/var/lib/microstream")
    memory = settings.get("memory_limit")
    lines = [
        "# Written by `microstream service install " + role + "`; see docs/deploy.md.",
        "[Unit]",
        f"Description={DESCRIPTION[role]}",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",  # an agent waiting for its coordinator keeps trying, every RestartSec
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        f"ExecStart={python} -m microstream.cli {role} --config {config_path}",
    ]
    if role == cfg.COORDINATOR:
        lines.append("ExecReload=/bin/kill -HUP $MAINPID")  # re-reads the trusted keys (they apply live anyway)
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "KillMode=mixed",          # SIGTERM to microstream only: an agent stops its hosts itself, in order
        "TimeoutStopSec=30",
        f"WorkingDirectory={home}",
        f"Environment=MICROSTREAM_HOME={home}",
        f"Environment=NUMBA_CACHE_DIR={home / 'numba-cache'}",
        "Environment=PYTHONUNBUFFERED=1",
        "UMask=0077",
    ]
    if memory:
        lines.append(f"MemoryMax={memory}")
    lines += [
        "# hardening: read-only system, only its own directories writable, no privileges",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(writable_paths(settings, role, layout))}",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "# MemoryDenyWriteExecute is not set: numba compiles kernels into executable memory",
    ]
    if role == cfg.COORDINATOR:
        lines.append("PrivateDevices=yes")  # an agent may read sensors under /dev (and /dev/kvm for microVMs)
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _hidden(settings: dict[str, Any]) -> list[str]:
    """Configured paths the unit would not see (ProtectHome, PrivateTmp)."""
    return [f"{key} = {value}" for key, value in settings.items()
            if key in ("keys", "key", "coordinator_key", "work_dir", "replica_dir", "state_dir", "checkpoint_dir",
                       "topology")
            and isinstance(value, str) and value.startswith("/")
            and any(Path(value).is_relative_to(h) for h in HIDDEN)]


def install(role: str, config_file: Path | None, layout: Layout, user: str = "microstream", enable: bool = True,
            python: str | None = None, progress=print) -> tuple[Path, Path]:
    """Install the configuration and the unit (see the module's doc); returns (unit file, configuration file) as
    written. Raises ConfigError for a configuration that cannot work as a service."""
    target = layout.ref(f"/etc/microstream/{role}.toml")
    source = config_file or layout.on_disk(target)
    if not source.exists():
        raise ConfigError(f"no configuration: {source} does not exist; pass --config FILE (docs/deploy.md)")
    settings = settle(cfg.load(source, role), role, layout)
    if role == cfg.AGENT and not settings.get("name"):
        raise ConfigError(f"config file {source}: an agent needs a name (name = \"pi07\")")
    hidden = _hidden(settings)
    if hidden and not layout.relocated:
        raise ConfigError(f"config file {source}: the service cannot see {', '.join(hidden)} (ProtectHome and "
                          "PrivateTmp hide /home, /root and /tmp from it): put keys under /etc/microstream/keys "
                          "(`microstream keys unbundle FILE --dir /etc/microstream/keys`) and data under "
                          "/var/lib/microstream")
    config_out = layout.on_disk(target)
    config_out.parent.mkdir(parents=True, exist_ok=True)
    memory = settings.get("memory_limit")
    written = {**settings, **({"memory_limit": cfg.format_size(memory)} if memory else {})}
    config_out.write_text(f"# microstream {role}, installed by `microstream service install {role}`"
                          f"{f' from {source}' if source.resolve() != config_out.resolve() else ''}\n"
                          + cfg.to_toml(written), encoding="utf-8")
    os.chmod(config_out, 0o644)
    unit = layout.on_disk(layout.ref(f"/etc/systemd/system/{unit_name(role)}"))
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(unit_text(role, target, settings, layout, user=user, python=python), encoding="utf-8")
    os.chmod(unit, 0o644)
    wanted = writable_paths(settings, role, layout) + [settings[k] for k in ("work_dir", "state_dir") if k in settings]
    directories = [layout.on_disk(p) for p in wanted
                   if layout.real or not layout.relocated or Path(p).is_relative_to(layout.base)]
    for d in directories:  # (under --prefix, what is outside it is the test's business)
        d.mkdir(parents=True, exist_ok=True)
    progress(f"wrote {unit} and {config_out}")
    if layout.real and os.geteuid() == 0:
        _user_and_owners(user, directories, settings, progress)
        _systemctl(role, enable, progress)
    elif layout.real:
        progress("not root: no user created, nothing enabled; as root: `microstream service install "
                 f"{role} --config {target}`")
    else:
        progress(f"under {layout.write}: no user created, nothing enabled (on the machine: `systemctl enable --now "
                 f"{unit_name(role)}`)")
    return unit, config_out


def _user_and_owners(user: str, directories: list[Path], settings: dict[str, Any], progress) -> None:
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--home-dir", "/var/lib/microstream", "--shell",
                        "/usr/sbin/nologin", user], check=True)
        progress(f"created the system user {user}")
    for d in directories:
        subprocess.run(["chown", "-R", f"{user}:{user}", str(d)], check=True)
    keys = settings.get("keys")
    if keys and Path(keys).is_dir():  # its secret key must be readable by it alone
        subprocess.run(["chown", "-R", f"{user}:{user}", keys], check=True)


def _systemctl(role: str, enable: bool, progress) -> None:
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").is_dir():
        progress(f"systemd is not running here: start it by hand, or on the target `systemctl enable --now "
                 f"{unit_name(role)}`")
        return
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    if enable:
        subprocess.run(["systemctl", "enable", "--now", unit_name(role)], check=True)
        progress(f"enabled and started {unit_name(role)}: `journalctl -u {unit_name(role)} -f` shows its log")
    else:
        progress(f"not enabled (--no-enable): `systemctl enable --now {unit_name(role)}` starts it")


EXAMPLES = {"install": "examples:\n  sudo microstream service install agent --config agent.toml\n"
                       "  microstream service install agent --config agent.toml --root /mnt/sdcard",
            "show": "examples:\n  microstream service show coordinator --config coordinator.toml"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microstream service", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("install", "install the configuration and the systemd unit, create the user, enable and "
                                     "start it"),
                         ("show", "print the unit that `install` would write")):
        p = sub.add_parser(action, help=text, description=textwrap.fill(text[:1].upper() + text[1:] + "."),
                           epilog=EXAMPLES[action], formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("role", choices=ROLES, help="the machine's role: agent or coordinator")
        p.add_argument("--config", type=Path, metavar="FILE",
                       help="the ROLE's configuration (TOML; default: the installed /etc/microstream/ROLE.toml)")
        p.add_argument("--user", default="microstream", help="the dedicated user it runs as (default %(default)s)")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--root", type=Path, metavar="DIR",
                           help="write under DIR (e.g. a mounted SD card); create no user, start nothing")
        where.add_argument("--prefix", type=Path, metavar="DIR",
                           help="relocate everything under DIR, the unit's paths too (tests)")
        p.add_argument("--python", help=argparse.SUPPRESS)
        if action == "install":
            p.add_argument("--no-enable", action="store_true", help="do not enable and start the unit")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    layout = Layout(args.root, args.prefix)
    try:
        if args.action == "show":
            source = args.config or layout.on_disk(layout.ref(f"/etc/microstream/{args.role}.toml"))
            settings = settle(cfg.load(source, args.role), args.role, layout)
            print(unit_text(args.role, layout.ref(f"/etc/microstream/{args.role}.toml"), settings, layout,
                            user=args.user, python=args.python), end="")
            return EXIT_OK
        install(args.role, args.config, layout, user=args.user, enable=not args.no_enable, python=args.python,
                progress=lambda text: print(text, file=sys.stderr))
        return EXIT_OK
    except ConfigError as exc:
        print(f"microstream service: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"microstream service: {exc}", file=sys.stderr)
        return EXIT_FAILED
