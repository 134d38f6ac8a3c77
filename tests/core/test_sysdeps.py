"""Installing the system programs microstream drives (mosquitto, Prometheus, QEMU) from Debian's packages."""

from __future__ import annotations

import os
import shutil

import pytest

from microstream.core.sysdeps import apt_install


def test_refusing_to_install_names_the_command_to_run():
    with pytest.raises(RuntimeError, match=r"apt-get install -y --no-install-recommends mosquitto.*as root"):
        apt_install(["mosquitto"], "the MQTT broker", install=False)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None, reason="needs root and apt-get")
def test_installing_what_is_there_is_quick_and_says_so():
    said: list[str] = []
    apt_install(["mosquitto"], "the MQTT broker", progress=said.append)  # installed by make test already
    assert said[0] == "installing mosquitto (the MQTT broker) with apt-get" and said[-1] == "installed mosquitto"

