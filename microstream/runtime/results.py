"""What a finished run reports, merged the same way for a local run (one virtual node) and a cluster job
(one result per virtual node)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.batch import Batch
from ..graph.logical import LogicalGraph
from .progress import fit, table
from .progress import width as terminal_width

# dead letters kept in a run's result (all are counted); here, not in tasks, so that reading a result (a client,
# an agent) does not import the kernels and numba
KEEP_DEAD_LETTERS = 1000


@dataclass
class RunResult:
    """What a finished run reports."""

    pipeline: str
    seconds: float
    records_in: dict[str, int] = field(default_factory=dict)     # per source
    records_out: dict[str, int] = field(default_factory=dict)    # per sink
    dead_letter_count: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # the first 1000
    late_count: int = 0                                          # records sent to a window's `.late`
    late_window_drops: int = 0   # (record, window) pairs dropped as too late: a sliding window's record has several
    partially_late: int = 0      # records too late for some of their windows only (in late_count if routed to .late)
    outputs: dict[str, str] = field(default_factory=dict)        # sink -> the file it wrote, for file sinks
    # wall times (time.time()) of the data path: a source began reading its first batch, a sink took in its last
    # (None if nothing flowed). A cluster job's deployment and the trip of its results to the client lie outside.
    flow_start: float | None = None
    flow_end: float | None = None
    # CPU seconds the run's processes spent, all threads: a local run's process during the run; a cluster job's
    # hosts from their start (deployment included; not the agents' and the coordinator's)
    cpu_seconds: float | None = None

    @property
    def flow_seconds(self) -> float | None:
        """How long records flowed: from the first batch a source read to the last batch a sink took in."""
        if self.flow_start is None or self.flow_end is None:
            return None
        return max(0.0, self.flow_end - self.flow_start)

    def summary(self) -> str:
        """The run on one line (records in and out, dead letters, late records, time); `report()` for a table."""
        rin = sum(self.records_in.values())
        rout = sum(self.records_out.values())
        rate = f", {rin / self.seconds:,.0f} records/s" if self.seconds > 0 else ""
        text = (f"{self.pipeline}: {rin:,} records in, {rout:,} out, {self.dead_letter_count:,} dead letters, "
                f"{self.late_count:,} late{_partial(self)}, {self.seconds:.2f} s{rate}")
        if self.dead_letters:
            first = self.dead_letters[0]
            text += f"\n  first dead letter: {first['operator']} at {first['position']}: {first['reason']}"
        return text

    def report(self, width: int | None = None) -> str:
        """The run as a table fitted to `width` (the terminal's by default): records in per source, out per sink
        with the file each wrote, dead letters, late records and the time taken."""
        return report(self, width or terminal_width())


def report(result: RunResult, columns: int) -> str:
    """A finished run as a table fitted to `columns`: records in per source, out per sink with the file it
    wrote, dead letters and late records, the time taken.

    >>> r = RunResult("rooms", 1.5, {"read_csv": 8143}, {"jsonl": 2059, "csv": 312}, 1, late_count=4,
    ...               outputs={"jsonl": "out/rooms.jsonl", "csv": "out/stuffy.csv"})
    >>> print(report(r, 80))
    rooms: 8,143 records in 1.50 s (5,429/s): 1 dead letter, 4 late records
      source    records in
      read_csv       8,143
      sink   records out  file
      jsonl        2,059  out/rooms.jsonl
      csv            312  out/stuffy.csv
    """
    rin = sum(result.records_in.values())
    rate = f" ({rin / result.seconds:,.0f}/s)" if result.seconds > 0 else ""
    dead = f"{result.dead_letter_count:,} dead letter{'' if result.dead_letter_count == 1 else 's'}"
    late = f"{result.late_count:,} late record{'' if result.late_count == 1 else 's'}"
    lines = [fit(f"{result.pipeline}: {rin:,} records in {result.seconds:.2f} s{rate}: {dead}, {late}", columns)]
    if result.partially_late:
        lines.append(fit(f"  sliding windows: {_partial(result)[2:-1]}", columns))
    lines += table(["source", "records in"], [[k, f"{v:,}"] for k, v in result.records_in.items()], columns)
    sinks = [[k, f"{v:,}", result.outputs.get(k, "")] for k, v in result.records_out.items()]
    has_files = any(row[2] for row in sinks)
    lines += table(["sink", "records out", *(["file"] if has_files else [])],
                    [row if has_files else row[:2] for row in sinks], columns)
    if result.dead_letters:
        first = result.dead_letters[0]
        lines.append(fit(f"  first dead letter: {first['operator']} at {first['position']}: {first['reason']}",
                         columns))
    return "\n".join(lines)


def _partial(result: RunResult) -> str:
    """The partial lateness of sliding windows, when there was any: records that lost some of their windows."""
    if not result.partially_late:
        return ""
    return (f" ({result.partially_late:,} too late for only some of their windows; "
            f"{result.late_window_drops:,} record-window drops)")


def merge_results(graph: LogicalGraph, results: list[dict[str, Any]], seconds: float) -> RunResult:
    """One run's result from its virtual nodes' results; what `collect` sinks gathered is handed to the
    pipeline's own sink objects (the specs the user holds), replacing what an earlier run left there."""
    out = RunResult(graph.name, seconds)
    collected: dict[str, list[Batch]] = {}
    for r in results:
        for k, v in r["records_in"].items():
            out.records_in[k] = out.records_in.get(k, 0) + v
        for k, v in r["records_out"].items():
            out.records_out[k] = out.records_out.get(k, 0) + v
        out.dead_letter_count += r["dead_letter_count"]
        out.late_count += r.get("late_count", 0)
        counters = r.get("counters", {})
        out.late_window_drops += counters.get("late_window_drops", 0)
        out.partially_late += counters.get("partially_late", 0)
        out.dead_letters.extend(r["dead_letters"][:KEEP_DEAD_LETTERS - len(out.dead_letters)])
        for name, batches in r["collected"].items():
            collected.setdefault(name, []).extend(Batch(b) for b in batches)
        if r.get("cpu_seconds") is not None:
            out.cpu_seconds = (out.cpu_seconds or 0.0) + r["cpu_seconds"]
        start, end = r.get("flow") or (None, None)  # a host of an older version reports none
        if start is not None:
            out.flow_start = start if out.flow_start is None else min(out.flow_start, start)
        if end is not None:
            out.flow_end = end if out.flow_end is None else max(out.flow_end, end)
    for node in graph.nodes.values():
        if node.op.collects:
            node.op.deliver(collected.get(node.name, []))
        path = getattr(node.op, "path", None)
        if node.is_sink and path is not None and node.name in out.records_out:
            out.outputs[node.name] = str(path)
    return out
