"""The logical graph: operators, the edges between their ports, and the schema on every edge.

A graph is built node by node by the `Pipeline` API; each node's output schemas are computed when
it is added, so a mistake is reported at the line of the user's script that made it. `validate()`
adds the whole-graph checks (cycles, streams used by nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..core.batch import Batch
from ..core.errors import MicrostreamError, PipelineError
from ..core.schema import Schema
from ..operators.base import DEAD, DEAD_LETTER_SCHEMA, OUT, Emit, Operator


@dataclass(eq=False)
class Node:
    id: int
    name: str
    op: Operator
    inputs: list[tuple[int, str]]          # (upstream node id, its output port), one per input
    where: str = ""                        # "script.py:12": the line that created it
    out_schemas: dict[str, Schema] = field(default_factory=dict)
    at: str | None = None                  # placement hint: the physical node a source is attached to
    parallelism: int = 1
    backend: str = "process"               # the host backend its tasks need ("microvm": isolate untrusted code)

    @property
    def is_source(self) -> bool:
        return self.op.n_inputs == 0

    @property
    def is_sink(self) -> bool:
        return not self.op.output_ports()


class DeadLetterHub(Operator):
    """The pipeline-wide dead-letter stream: bad records from every operator, with the reason."""

    kind = "dead_letters"
    cpu_us = 1.0
    n_inputs = 0

    def output_schemas(self, inputs: list[Schema], name: str) -> dict[str, Schema]:
        return {OUT: DEAD_LETTER_SCHEMA}

    def side_ports(self) -> tuple[str, ...]:
        return (OUT,)  # unused dead letters are still counted and kept in the run result

    def process(self, port: int, batch: Batch) -> Emit:
        return [(OUT, batch)]  # fed by every operator's dead-letter port (edges the physical plan adds)


class LogicalGraph:
    def __init__(self, name: str, backend: str = "process") -> None:
        self.name = name
        self.backend = backend  # the host backend operators get unless they ask for another
        self.checkpoint_every: float | None = 10.0  # seconds between a cluster job's checkpoints (None: none)
        self.max_restarts = 3                        # recoveries from a checkpoint before a fault fails the job
        self.incremental_checkpoints = True          # hosts send only changed chunks (False: all, as a baseline)
        self.nodes: dict[int, Node] = {}
        self._names: set[str] = set()
        self._counter: dict[str, int] = {}

    # -- building ---------------------------------------------------------------------------------
    def add(self, op: Operator, inputs: list[tuple[int, str]], name: str | None = None, where: str = "",
            at: str | None = None, parallelism: int = 1) -> Node:
        name = self._unique_name(name, op.kind)
        for src, port in inputs:
            if src not in self.nodes:
                raise PipelineError(name, f"input node {src} belongs to another pipeline",
                                    "build every stream of a job from the same Pipeline")
            if port not in self.nodes[src].out_schemas:
                raise PipelineError(name, f"'{self.nodes[src].name}' has no output '{port}'")
        if op.__dict__.get("_frozen"):
            raise PipelineError(name, f"this {op.kind} object is already part of a pipeline",
                                f"create a new one for each use, e.g. a second ms.sinks.{op.kind}(...)"
                                if not op.output_ports() else f"create a new {type(op).__name__}(...) for each use")
        op.n_inputs = op.n_inputs if op.n_inputs == 0 else len(inputs)
        schemas = [self.nodes[s].out_schemas[p] for s, p in inputs]
        try:
            out = op.output_schemas(schemas, name)
        except PipelineError as exc:
            if exc.operator is None:
                raise PipelineError(name, exc.problem, exc.fix) from None
            raise
        except MicrostreamError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # a check the operator lacks (a source's option, an operator of the user's own): name it at least
            raise PipelineError(name, f"could not work out its output columns ({type(exc).__name__}: {exc})",
                                f"check the arguments given to this {op.kind} (column names, types and options) "
                                "against its documentation") from exc
        if DEAD in op.side_ports():
            out = {**out, DEAD: DEAD_LETTER_SCHEMA}
        node = Node(len(self.nodes), name, op, list(inputs), where, out, at, parallelism)
        node.backend = self.backend
        op.freeze()
        self.nodes[node.id] = node
        self._names.add(name)
        return node

    def _unique_name(self, name: str | None, kind: str) -> str:
        if name is not None:
            if not isinstance(name, str) or not name.strip():
                raise PipelineError(kind, f"name={name!r} is not a name", f"name the operator with text, e.g. "
                                                                          f"name='{kind}_1', or leave name= out")
            if name in self._names:
                raise PipelineError(name, "this name is already used by another operator",
                                    "give each operator a unique name=")
            return name
        n = self._counter.get(kind, 0) + 1
        self._counter[kind] = n
        candidate = kind if n == 1 else f"{kind}#{n}"
        while candidate in self._names:
            n += 1
            candidate = f"{kind}#{n}"
        self._counter[kind] = n
        return candidate

    # -- queries ----------------------------------------------------------------------------------
    def by_name(self, name: str) -> Node:
        for node in self.nodes.values():
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self, node_id: int, port: str | None = None) -> Iterator[tuple[Node, int]]:
        """(downstream node, its input index) for every edge leaving `node_id` (from `port`)."""
        for node in self.nodes.values():
            for idx, (src, p) in enumerate(node.inputs):
                if src == node_id and (port is None or p == port):
                    yield node, idx

    def edges(self) -> Iterator[tuple[Node, str, Node, int]]:
        for node in self.nodes.values():
            for idx, (src, port) in enumerate(node.inputs):
                yield self.nodes[src], port, node, idx

    def dead_letter_hub(self) -> Node | None:
        return next((n for n in self.nodes.values() if isinstance(n.op, DeadLetterHub)), None)

    # -- whole-graph checks -----------------------------------------------------------------------
    def topo_order(self) -> list[Node]:
        indeg = {n.id: len(n.inputs) for n in self.nodes.values()}
        ready = [i for i, d in indeg.items() if d == 0]
        order: list[Node] = []
        while ready:
            nid = ready.pop(0)
            order.append(self.nodes[nid])
            for dst, _ in self.consumers(nid):
                indeg[dst.id] -= 1
                if indeg[dst.id] == 0:
                    ready.append(dst.id)
        if len(order) != len(self.nodes):
            stuck = sorted(self.nodes[i].name for i, d in indeg.items() if d > 0)
            raise PipelineError(stuck[0], f"the pipeline has a cycle through {stuck}",
                                "streams must flow one way; remove the edge that feeds a stream back")
        return order

    def validate(self) -> None:
        if not self.nodes:
            raise PipelineError(None, f"pipeline '{self.name}' is empty", "add a source and a sink")
        order = self.topo_order()
        for node in order:
            side = set(node.op.side_ports())
            for port in node.op.output_ports():
                if port in side:
                    continue
                if not any(True for _ in self.consumers(node.id, port)):
                    what = "stream" if port == OUT else f"output '{port}'"
                    raise PipelineError(node.name, f"its {what} is used by nothing (defined at {node.where})",
                                        "add a sink, e.g. .sink(ms.sinks.print()), or remove the operator")
        if not any(n.is_sink for n in order):
            raise PipelineError(None, f"pipeline '{self.name}' has no sink", "add .sink(...) to a stream")

    def shipping_problem(self) -> PipelineError | None:
        """The first operator that cannot be sent to a cluster's agents (cloudpickled, as a job is): e.g. a function
        that captured a lock, an open socket or file, or a database connection from the script. None if every one
        can be. Costly for operators holding large data (it pickles each), so it is asked when shipping failed."""
        import cloudpickle

        for node in self.nodes.values():
            try:
                cloudpickle.dumps(node.op)
            except Exception as exc:  # noqa: BLE001 - whatever pickling refuses, the operator is named
                return PipelineError(node.name, f"cannot be sent to the cluster's agents (defined at {node.where}): "
                                                f"{type(exc).__name__}: {exc}",
                                     "a function that runs on the cluster must not capture a lock, an open socket or "
                                     "file, or a connection from the script: create it inside the function (or in "
                                     "a source's or sink's open()), and capture only plain values")
        return None

    # -- pictures ---------------------------------------------------------------------------------
    def describe(self) -> str:
        """A table of operators: name, kind, inputs, what it does and its output schema."""
        rows = [("operator", "kind", "inputs", "details", "output columns (* key)")]
        for node in self.topo_order():
            ins = ", ".join(self.nodes[s].name + ("" if p == OUT else f".{p}") for s, p in node.inputs)
            schema = node.out_schemas.get(OUT)
            cols = schema.describe() if schema else ("-" if node.is_sink else
                                                      "; ".join(f"{p}: {s.describe()}" for p, s in
                                                                node.out_schemas.items() if p != DEAD))
            rows.append((node.name, node.op.kind, ins or "-", node.op.describe() or "-", cols))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for j, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
            if j == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(r[4]))
        return "\n".join(lines)
