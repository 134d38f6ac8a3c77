"""`microstream service install`: the configuration and the systemd units it writes, checked by systemd itself
(`systemd-analyze verify`, from Debian's systemd package, installed with apt-get if missing)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from microstream.cli.main import main
from microstream.cluster import config


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        from microstream.core.sysdeps import apt_install

        try:
            apt_install(["systemd"], "checking the generated units with systemd-analyze verify")
        except RuntimeError as exc:
            pytest.skip(f"SKIPPED LOUDLY: systemd-analyze is missing and cannot be installed: {exc}")
        path = shutil.which("systemd-analyze")
    assert path, "systemd installed but no systemd-analyze"
    return path


def _unit(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_units_for_an_agent_and_a_coordinator_pass_systemd_analyze_verify(tmp_path, capsys):
    analyze = _systemd_analyze()
    prefix = tmp_path / "machine"
    (tmp_path / "agent.toml").write_text('name = "pi07"\ncoordinator = "tcp://10.0.0.2:7077"\nmemory_limit = "300M"\n'
                                         'labels = { site = "library" }\n')
    (tmp_path / "coordinator.toml").write_text('bind = "tcp://0.0.0.0:7077"\nbeacon = true\n'
                                               'checkpoint_dir = "/srv/checkpoints"\n')
    for role in ("agent", "coordinator"):
        assert main(["service", "install", role, "--config", str(tmp_path / f"{role}.toml"), "--prefix",
                     str(prefix), "--no-enable"]) == 0
        unit_file = prefix / "etc" / "systemd" / "system" / f"microstream-{role}.service"
        unit = _unit(unit_file.read_text())
        assert unit["User"] == ["microstream"] and unit["Restart"] == ["on-failure"]
        for option in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "RestrictSUIDSGID"):
            assert unit[option] == ["yes"], option
        assert unit["ProtectSystem"] == ["strict"] and "MemoryDenyWriteExecute" not in unit  # numba JITs
        assert unit["ExecStart"] == [f"{sys.executable} -m microstream.cli {role} --config "
                                     f"{prefix}/etc/microstream/{role}.toml"]
        installed = config.load(prefix / "etc" / "microstream" / f"{role}.toml", role)
        writable = unit["ReadWritePaths"][0].split()
        assert str(prefix / "var/lib/microstream") in writable
        if role == "agent":
            assert unit["MemoryMax"] == [str(300 << 20)] and installed["memory_limit"] == 300 << 20
            assert installed["work_dir"] == str(prefix / "var/lib/microstream/agent")
            assert (prefix / "var/lib/microstream/agent").is_dir()
        else:
            assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and unit["PrivateDevices"] == ["yes"]
            assert "/srv/checkpoints" in writable
            assert installed["state_dir"] == str(prefix / "var/lib/microstream/state")
        done = subprocess.run([analyze, "verify", str(unit_file)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "microstream" not in done.stderr, done.stderr   # no warning about our unit either
    assert "nothing enabled" in capsys.readouterr().err


def test_service_show_prints_the_unit_and_a_path_the_service_cannot_see_is_refused(tmp_path, capsys):
    (tmp_path / "agent.toml").write_text('name = "pi07"\nkeys = "/home/pi/.microstream/keys"\n')
    assert main(["service", "show", "agent", "--config", str(tmp_path / "agent.toml")]) == 0
    assert "ExecStart=" in capsys.readouterr().out
    assert main(["service", "install", "agent", "--config", str(tmp_path / "agent.toml"), "--root",
                 str(tmp_path / "sd")]) == 2
    err = capsys.readouterr().err
    assert "keys = /home/pi/.microstream/keys" in err and "ProtectHome" in err
    (tmp_path / "bad.toml").write_text('name = "pi07"\nwork_dri = "/x"\n')
    assert main(["service", "install", "agent", "--config", str(tmp_path / "bad.toml"), "--prefix",
                 str(tmp_path / "p")]) == 2
    assert "unknown key 'work_dri'" in capsys.readouterr().err


def test_root_writes_under_it_with_the_paths_of_the_target(tmp_path):
    (tmp_path / "agent.toml").write_text('name = "pi07"\n')
    assert main(["service", "install", "agent", "--config", str(tmp_path / "agent.toml"), "--root",
                 str(tmp_path / "sd")]) == 0
    unit = (tmp_path / "sd/etc/systemd/system/microstream-agent.service").read_text()
    assert "--config /etc/microstream/agent.toml" in unit and "ReadWritePaths=/var/lib/microstream\n" in unit
    assert config.load(tmp_path / "sd/etc/microstream/agent.toml", "agent")["work_dir"] == "/var/lib/microstream/agent"


def test_an_agents_replica_directory_elsewhere_is_writable_by_its_unit(tmp_path):
    """Checkpoint replicas (docs/faults.md) on another disk than the work directory: the unit may write there."""
    (tmp_path / "agent.toml").write_text('name = "pi07"\nreplica_dir = "/srv/replicas"\n')
    assert main(["service", "install", "agent", "--config", str(tmp_path / "agent.toml"), "--root",
                 str(tmp_path / "sd")]) == 0
    unit = _unit((tmp_path / "sd/etc/systemd/system/microstream-agent.service").read_text())
    assert "/srv/replicas" in " ".join(unit["ReadWritePaths"])
