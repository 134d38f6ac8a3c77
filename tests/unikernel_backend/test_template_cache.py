"""A cached microVM template is used only if it was built for this image, QEMU, machine and VM shape and its files
are whole (`template.check`); otherwise the reason says what is wrong. Files only: no QEMU here (the slow
`test_microvm_template.py` restores real ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microstream.unikernel_backend import template as templates

WANT = {"recipe": templates.RECIPE, "image_key": "abc", "arch": "amd64", "qemu": "QEMU emulator version 7.2.22",
        "machine": "pc-i440fx-7.2", "accel": "tcg", "memory_mb": 384, "cpus": 1}


def make(tmp_path: Path, name: str | None = None, **changes: object) -> Path:
    directory = tmp_path / (name or templates.template_key(WANT))
    directory.mkdir()
    (directory / "ram").write_bytes(b"\0" * 4096)
    (directory / "state.zst").write_bytes(b"device state")
    (directory / "state.zst.json").write_text("{}")
    info = {**WANT, "ram_bytes": 4096, "state_sha256": templates.file_sha256(directory / "state.zst"), **changes}
    (directory / "manifest.json").write_text(json.dumps(info))
    return directory


def test_a_whole_template_built_for_this_vm_is_used(tmp_path):
    template = templates.check(make(tmp_path), WANT)
    assert template.memory_mb == 384 and template.accel == "tcg" and template.ram.name == "ram"


def test_a_template_of_another_qemu_or_image_is_stale_and_says_what_changed(tmp_path):
    directory = make(tmp_path, qemu="QEMU emulator version 7.1.0", image_key="old")
    with pytest.raises(templates.TemplateError, match=r"stale: built for image_key 'old' \(now 'abc'\), qemu"):
        templates.check(directory, WANT)


def test_a_changed_state_file_or_a_short_ram_file_is_corrupt(tmp_path):
    directory = make(tmp_path)
    (directory / "state.zst").write_bytes(b"device statf")
    with pytest.raises(templates.TemplateError, match="corrupt: its saved state does not match its checksum"):
        templates.check(directory, WANT)
    (directory / "state.zst").write_bytes(b"device state")
    (directory / "ram").write_bytes(b"\0" * 100)
    with pytest.raises(templates.TemplateError, match="corrupt: RAM file of 100 bytes, 4096 expected"):
        templates.check(directory, WANT)


def test_a_discarded_template_is_gone_and_the_mode_is_checked(tmp_path, monkeypatch):
    directory = make(tmp_path)
    templates.discard(directory, log=lambda _: None)
    assert not directory.exists() and not list(tmp_path.iterdir())
    monkeypatch.setenv("MICROSTREAM_VM_TEMPLATE", "sometimes")
    with pytest.raises(ValueError, match="use one of on, eager, off"):
        templates.mode()


def test_only_the_newest_templates_are_kept(tmp_path):
    for age, name in enumerate(["newest", "second", "third", "oldest"]):
        make(tmp_path, name, built=1000.0 - age)
    (tmp_path / ".build-x").mkdir()  # a build in progress is not a template
    assert templates.prune(tmp_path, log=lambda _: None, keep=2) == ["oldest"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build-x", "newest", "second", "third"]
