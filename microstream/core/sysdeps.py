"""System programs that parts of microstream drive (mosquitto for MQTT, Prometheus, QEMU for microVMs), and
their installation from Debian's packages with apt-get, so that `make test` and `make demo` need no manual set-up."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence


def apt_install(packages: Sequence[str], what: str, progress: Callable[[str], None] = print,
                install: bool = True) -> None:
    """Install Debian `packages` (needed for `what`) with apt-get, retrying once after `apt-get update`.

    Raises RuntimeError naming the command to run by hand when apt-get is absent, we are not root, or
    `install` is False."""
    names = " ".join(packages)
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{names} ({what}) is not installed: install it with "
                           f"`apt-get install -y --no-install-recommends {names}` (as root)")
    progress(f"installing {names} ({what}) with apt-get")
    # wait for dpkg's lock rather than fail: parallel test workers may install at the same time
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        progress("apt-get install failed; running apt-get update and trying again")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install {names} failed:\n{done.stderr[-2000:]}")
    progress(f"installed {names}")
