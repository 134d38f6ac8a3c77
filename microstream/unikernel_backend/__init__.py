"""The `microvm` host backend: a virtual node inside a small single-application QEMU virtual machine.

- `image.build_image()` builds the bootable image from Debian packages (cached by content hash);
- `vm.MicroVM` launches it under QEMU (KVM where a probe boot shows it works, else TCG), driven over QMP,
  and saves/restores it whole with QEMU's migration stream;
- `channel.Channel` is the host end of the virtio-serial control channel to the in-VM agent (`guest.py`).

Nothing here is imported eagerly: `guest.py` must stay importable on its own inside the VM.
"""
