"""A real Prometheus server for microstream's metrics: find or install the binary, write a scrape configuration.

`ensure_prometheus()` returns the `prometheus` binary, installing the Debian package with apt-get first when
it is missing and we are root (as `make test` does, like QEMU for the microVM tests). `scrape_config()` and
`file_sd()` write what docs/prometheus.md describes: the coordinator as a static target, the agents as
static targets or through a file-based service discovery file that can be rewritten while Prometheus runs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping

from ..core.sysdeps import apt_install

PACKAGE = "prometheus"


def prometheus_path() -> str | None:
    """The Prometheus server binary, if installed."""
    return shutil.which("prometheus") or next(
        (p for p in ("/usr/bin/prometheus", "/usr/local/bin/prometheus") if os.access(p, os.X_OK)), None)


def ensure_prometheus(progress: Callable[[str], None] = print, install: bool = True) -> str:
    """Return the prometheus binary, installing the Debian package with apt-get if it is missing (needs root).

    Raises RuntimeError when it is missing and cannot be installed. The package's service is not started
    here (in containers `policy-rc.d` usually forbids it); tests start their own server."""
    found = prometheus_path()
    if found:
        return found
    apt_install([PACKAGE], "the server the Prometheus test scrapes a cluster with", progress, install)
    found = prometheus_path()
    if not found:
        raise RuntimeError("still no prometheus binary after installing the prometheus package")
    return found


def file_sd(agents: Mapping[str, str]) -> str:
    """A Prometheus file_sd targets file (JSON) for agents, {agent name: "host:port"}.

    Each target gets the label `microstream_agent` (not `node`, which the agents' own series use)."""
    groups = [{"targets": [address], "labels": {"microstream_agent": name}} for name, address in sorted(agents.items())]
    return json.dumps(groups, indent=2) + "\n"


def scrape_config(coordinator: str, agents: Iterable[str] = (), agents_file: str | None = None,
                  interval: str = "15s", coordinator_interval: str = "5s") -> str:
    """prometheus.yml scraping the coordinator at `coordinator` ("host:port") and the agents, given as
    static "host:port" targets and/or a file_sd file (see `file_sd`), which Prometheus re-reads on change.

    `honor_labels: true` keeps the metrics' own `job` label (the microstream job); without it Prometheus
    renames it to `exported_job`, because every scraped series gets the scrape job's name as `job`."""
    lines = ["global:", f"  scrape_interval: {interval}", "", "scrape_configs:",
             "  - job_name: microstream-coordinator", f"    scrape_interval: {coordinator_interval}",
             "    honor_labels: true", "    static_configs:", f'      - targets: ["{coordinator}"]', "",
             "  - job_name: microstream-agents", "    honor_labels: true"]
    static = list(agents)
    if static:
        lines += ["    static_configs:", "      - targets: [" + ", ".join(f'"{a}"' for a in static) + "]"]
    if agents_file:
        lines += ["    file_sd_configs:", f'      - files: ["{agents_file}"]', f"        refresh_interval: {interval}"]
    if not static and not agents_file:
        raise ValueError("scrape_config needs agents (static targets) or agents_file (file-based discovery)")
    return "\n".join(lines) + "\n"
