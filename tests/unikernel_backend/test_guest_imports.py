"""What a microVM guest runs must import with what its image holds: the guest has no pyzmq (its relay on the
host terminates the ZeroMQ channels), so nothing on the guest's import path may import zmq at module level.
(A module-level import once broke every image build at its smoke test.)"""

from __future__ import annotations

import subprocess
import sys

from microstream.unikernel_backend.image import GUEST_FILES


def test_the_guest_runtime_imports_without_pyzmq():
    code = ("import sys; sys.modules['zmq'] = None\n"  # `import zmq` now raises ImportError, as in the guest
            "import microstream.unikernel_backend.guest, microstream.unikernel_backend.vmhost\n"
            "import microstream.runtime.host, microstream.runtime.host_lifecycle, microstream.runtime.tasks\n"
            "import microstream.sinks, microstream.sources, microstream.operators\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_guest_holds_the_modules_its_runtime_imports():
    for needed in ("microstream/runtime/host.py", "microstream/runtime/statexfer.py",
                   "microstream/unikernel_backend/vmhost.py"):
        assert needed in GUEST_FILES
