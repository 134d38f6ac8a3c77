"""What a finished run reports, merged the same way for a local run (one virtual node) and a cluster job
(one result per virtual node)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.batch import Batch
from ..graph.logical import LogicalGraph
from .tasks import KEEP_DEAD_LETTERS


@dataclass
class RunResult:
    """What a finished run reports."""

    pipeline: str
    seconds: float
    records_in: dict[str, int] = field(default_factory=dict)     # per source
    records_out: dict[str, int] = field(default_factory=dict)    # per sink
    dead_letter_count: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # the first 1000
    late_count: int = 0

    def summary(self) -> str:
        rin = sum(self.records_in.values())
        rout = sum(self.records_out.values())
        rate = f", {rin / self.seconds:,.0f} records/s" if self.seconds > 0 else ""
        text = (f"{self.pipeline}: {rin:,} records in, {rout:,} out, {self.dead_letter_count:,} dead letters, "
                f"{self.late_count:,} late, {self.seconds:.2f} s{rate}")
        if self.dead_letters:
            first = self.dead_letters[0]
            text += f"\n  first dead letter: {first['operator']} at {first['position']}: {first['reason']}"
        return text


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
        out.dead_letters.extend(r["dead_letters"][:KEEP_DEAD_LETTERS - len(out.dead_letters)])
        for name, batches in r["collected"].items():
            collected.setdefault(name, []).extend(Batch(b) for b in batches)
    for node in graph.nodes.values():
        if node.op.collects:
            node.op.deliver(collected.get(node.name, []))
    return out
