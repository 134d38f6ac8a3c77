"""`make bench`: run every benchmark and write JSON under bench/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["canonical.py", "channels.py", "cluster.py", "hosts.py", "migration.py", "checkpoints.py", "replicas.py",
              "restart.py", "placement.py", "microvm.py", "mqtt.py", "peers.py"]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / name), *sys.argv[1:]])
    return failed


if __name__ == "__main__":
    sys.exit(main())
