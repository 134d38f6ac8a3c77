"""Run a pipeline script as `__main__` and print, as the last line, a JSON report: the numba compilations it
caused (not cache loads), its wall time and its peak resident set.

    python tests/arm64/run_counted.py examples/sensors/rooms.py

(The arm64 lane runs it inside the emulated root; the bench runs it natively too, as the baseline.)"""

from __future__ import annotations

import json
import runpy
import sys
import time


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    script = sys.argv[1]
    start = time.perf_counter()
    from microstream.warmup import compiles

    with compiles() as done:
        sys.argv = [script]
        runpy.run_path(script, run_name="__main__")
    print(json.dumps({"script": script, "seconds": round(time.perf_counter() - start, 2), "compiled": done,
                      "peak_rss_mb": round(_peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
