"""The `microstream` command line (`microstream --help` lists every verb, `microstream VERB --help` its options).

    microstream run script.py [--describe] [--graph out.svg]
    microstream describe script.py
    microstream graph script.py -o pipeline.svg   (or .dot)
    microstream cluster up --nodes 3 [--detach] | cluster down
    microstream coordinator | agent --coordinator tcp://HOST:PORT --name NAME
    microstream submit script.py | status [JOB [--wait]] | logs JOB | stop JOB | console
    microstream plan script.py --topology campus.toml [--explain] [--svg out.svg] | topology check|show FILE
    microstream migrate JOB VNODE --to NODE | drain NODE | undrain NODE | save JOB VNODE FILE | restore JOB VNODE FILE
    microstream keys create|trust|revoke|list|bundle|unbundle | service install | image build | warmup

Exit codes: 0 success, 1 a failure while running (the job failed, the coordinator cannot be reached, a file cannot be
written), 2 the pipeline, the command line or a file it names is wrong, 130 interrupted (Ctrl-C). The commands meant
to run until stopped (`coordinator`, `agent`, a foreground `cluster up`, `status --watch`) exit 0 on Ctrl-C. An
expected error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import MicrostreamError
from .script import EXIT_FAILED, EXIT_OK, EXIT_USAGE, count, pipelines_of, port, run_script, seconds, zmq_address


def cmd_run(args: argparse.Namespace) -> int:
    _interrupt_on_sigterm()  # SIGTERM stops the run as Ctrl-C does: its clean-up runs, one line, exit 130
    if args.graph and not _graph_format_ok(args.graph):
        return EXIT_USAGE
    if args.describe or args.graph:
        code, pipelines = pipelines_of(args.script)
        if code:
            return code
        for p in pipelines:
            if args.describe:
                print(_fit(p.describe()))
            if args.graph:
                _write_graph(p, args.graph)
    return run_script(args.script, quiet=args.quiet)


def _fit(table: str) -> str:
    """A table fitted to the terminal's width when printed to one (as it is, into a pipe or a file)."""
    if not sys.stdout.isatty():
        return table
    from ..runtime.progress import fit_table, width

    return fit_table(table, width())


def cmd_describe(args: argparse.Namespace) -> int:
    code, pipelines = pipelines_of(args.script)
    for p in pipelines:
        print(f"pipeline {p.name}\n{_fit(p.describe())}\n")
    return code


def cmd_graph(args: argparse.Namespace) -> int:
    if not _graph_format_ok(args.output):
        return EXIT_USAGE
    code, pipelines = pipelines_of(args.script)
    for p in pipelines:
        _write_graph(p, args.output)
    return code


def _graph_format_ok(path: Path) -> bool:
    """A DAG is written as SVG or DOT only: refuse another suffix (out.png would hold SVG text) before running."""
    if path.suffix.lower() in (".svg", ".dot"):
        return True
    print(f"microstream: cannot write the DAG as {path.name}: name a .svg or a .dot file", file=sys.stderr)
    return False


def _write_graph(pipeline: Any, path: Path) -> None:
    text = pipeline.to_dot() if path.suffix.lower() == ".dot" else pipeline.to_svg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


# -- cluster verbs ---------------------------------------------------------------------------------------

def _home(args: argparse.Namespace) -> Path:
    from ..cluster.embedded import home

    return home(getattr(args, "home", None))


def _log_to_stderr() -> None:
    """Long-running components log (e.g. refused handshakes from untrusted keys) to stderr."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


def _stop_on_signals(component: Any, what: str) -> None:
    """SIGTERM and SIGINT stop `component` in order (its loop ends, then it closes), saying so."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        print(f"{what}: {signal.Signals(signum).name} received: stopping", file=sys.stderr, flush=True)
        component.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _load_security(args: argparse.Namespace, own: str) -> tuple[Any, Any]:
    """(our KeyPair, the KeyStore) unless --insecure. `--key` is a name in the key directory or a key file."""
    if args.insecure:
        from ..cluster.security import insecure_warning

        print(insecure_warning(own), file=sys.stderr)
        return None, None
    from ..cluster.security import KeyStore

    store = KeyStore(Path(args.keys) if args.keys else _home(args) / "keys")
    return _key_pair(store, args.key or own), store


def _key_pair(store: Any, key: str) -> Any:
    """Our key pair: `key` is a name in `store`, or the path of a NAME.key_secret file."""
    from ..cluster.security import SECRET_SUFFIX, load

    if "/" in key or key.endswith(SECRET_SUFFIX):
        return load(Path(key).expanduser())
    return store.pair(key)


def _config_option(p: argparse.ArgumentParser, role: str) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help=f"a TOML configuration file ({role}: see docs/deploy.md); options given here override it")


def _memory_option(p: argparse.ArgumentParser) -> None:
    from ..cluster.config import parse_size

    p.add_argument("--memory-limit", type=parse_size, metavar="SIZE",
                   help="memory this process may use, e.g. 300M: an agent offers at most this much to placement (with "
                        "its hosts); `service install` makes it the unit's MemoryMax")


def cmd_coordinator(args: argparse.Namespace) -> int:
    import zmq

    from ..cluster.coordinator import Coordinator

    _log_to_stderr()
    keys, store = _load_security(args, "coordinator")
    trusted = store.trusted() if store else {}
    roles = store.roles() if store else {}
    _warn_about_trust(trusted, roles, args)
    from ..placement.policy import PolicyParams

    policy = None if args.no_auto_place else PolicyParams(every=args.replace_every, min_gain=args.min_gain,
                                                            confirm=args.confirm, cooldown=args.cooldown)
    topology = None
    if args.topology:  # a missing, invalid or inconsistent file: exit 2, as for `plan`
        from .placement import load_checked

        topology, code = load_checked(args.topology)
        if topology is None:
            return code
    state_dir = None if args.no_state else Path(args.state_dir) if args.state_dir else _home(args) / "state"
    coord = Coordinator(args.bind, keys, trusted, metrics_port=args.metrics_port,
                        log=lambda text: print(text, file=sys.stderr, flush=True), policy=policy, topology=topology,
                        agent_timeout=args.agent_timeout, checkpoint_dir=args.checkpoint_dir, state_dir=state_dir,
                        adopt_grace=args.adopt_grace, keep_jobs=args.keep_jobs, roles=roles,
                        metrics_bind=args.metrics_bind, max_message=int(args.max_message * (1 << 20)),
                        checkpoint_replicas=args.checkpoint_replicas, node=args.node)
    try:
        endpoint = coord.open()
    except zmq.ZMQError as exc:  # an address in use, or not one of this machine's
        coord.close()
        print(f"microstream: coordinator: cannot listen on {args.bind}: {exc}; pass --bind tcp://HOST:PORT with an "
              "address of this machine and a free port", file=sys.stderr)
        return EXIT_FAILED
    from ..console import start_for  # the web console, fed by the coordinator's loop (docs/console.md)

    start_for(coord, _home(args), args)
    if args.port_file:
        Path(args.port_file).write_text(endpoint)
    print(f"coordinator listening on {endpoint}; metrics on {args.metrics_bind}:{coord.metrics_port}; trusts "
          f"{len(trusted)} keys; "
          + (f"state in {state_dir}" if state_dir else "no state directory (jobs are lost if it stops)"),
          file=sys.stderr, flush=True)
    beacon = None
    if args.beacon:
        from ..cluster.discovery import Beacon

        beacon = Beacon(endpoint, keys.public if keys else None, interface=args.interface, port=args.beacon_port)
        beacon.start()
    reloader = None
    if store is not None and coord.auth is not None:  # `keys trust/revoke/bundle` on its key store apply live
        import signal

        from ..cluster.security import TrustReloader

        reloader = TrustReloader(store, coord.auth, log=lambda text: print(text, file=sys.stderr, flush=True)).start()
        signal.signal(signal.SIGHUP, lambda signum, frame: reloader.request("SIGHUP"))
    _stop_on_signals(coord, "coordinator")
    try:
        coord.run()
    finally:
        if reloader:
            reloader.stop()
        if beacon:
            beacon.stop()
        if args.port_file:
            Path(args.port_file).unlink(missing_ok=True)
    print("coordinator: stopped; the agents and their hosts run on, and register again with a coordinator started "
          "on the same address, keys and state directory", file=sys.stderr, flush=True)
    return EXIT_OK


def _warn_about_trust(trusted: dict[bytes, str], roles: dict[bytes, str], args: argparse.Namespace) -> None:
    """Say which trusted keys have no role (they may do everything), and when a beacon announces a loopback address."""
    unrestricted = sorted(name for key, name in trusted.items() if roles.get(key, "unrestricted") == "unrestricted")
    if unrestricted:
        print(f"coordinator: {len(unrestricted)} trusted keys have no role and may do everything (submit jobs too): "
              f"{', '.join(unrestricted[:10])}{' ...' if len(unrestricted) > 10 else ''}; give each one with "
              "`microstream keys trust KEYFILE --role agent|client|read-only`", file=sys.stderr, flush=True)
    if args.beacon and ("127.0.0.1" in args.bind or "localhost" in args.bind or "[::1]" in args.bind):
        print(f"coordinator: --beacon with --bind {args.bind}: agents on other machines cannot reach a loopback "
              "address; for a cluster of several machines pass --bind tcp://0.0.0.0:7077", file=sys.stderr, flush=True)


def cmd_agent(args: argparse.Namespace) -> int:
    from ..cluster.agent import Agent

    _log_to_stderr()
    if not args.name:
        print("microstream: agent: no name: pass --name NAME, or name = \"...\" in the config file", file=sys.stderr)
        return EXIT_USAGE
    server_key = None
    if args.bundle:
        from ..cluster.security import read_bundle

        bundle = read_bundle(args.bundle)
        keys, server_key = bundle.pair, bundle.coordinator_public
    else:
        keys, store = _load_security(args, args.name)
        if store is not None:
            from ..cluster.embedded import coordinator_public

            server_key = (_public_from_file(args.coordinator_key) if args.coordinator_key
                          else coordinator_public(store.root))
    coordinator = args.coordinator
    if coordinator is None:
        from ..cluster.discovery import discover

        print("agent: looking for a coordinator on the LAN (multicast beacon)...", file=sys.stderr, flush=True)
        found = discover(timeout=args.discover_timeout, trust_key=server_key, interface=args.interface,
                         port=args.beacon_port)
        if found is None:
            print("agent: no coordinator found; pass --coordinator tcp://HOST:PORT", file=sys.stderr)
            return EXIT_FAILED
        coordinator = found.endpoint
        server_key = server_key or found.public_key
    labels = dict(item.split("=", 1) for item in args.label)
    workdir = None
    if args.work_dir:  # a private directory per run inside it: removed at stop, a restart never finds stale sockets
        import tempfile

        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{args.name}-", dir=args.work_dir))
        if len(f"{workdir}/hosts.sock") > 100:  # a Unix socket's path has at most 107 bytes
            workdir.rmdir()
            workdir = None
            print(f"agent: work_dir {args.work_dir} is too long a path for the hosts' Unix socket (at most ~90 "
                  "characters): using a private directory in the temporary directory instead", file=sys.stderr)
    # checkpoint replicas outlive the agent's run: under --work-dir (beside the per-run directories), else in HOME
    replica_dir = args.replica_dir or (Path(args.work_dir) / "replicas" if args.work_dir
                                       else _home(args) / "replicas" / args.name)
    agent = Agent(args.name, coordinator, keys, server_key, labels, replica_dir=replica_dir,
                  data_host=args.data_host or data_host_for(coordinator),
                  metrics_port=args.metrics_port, log=lambda text: print(text, file=sys.stderr, flush=True),
                  metrics_bind=args.metrics_bind, workdir=workdir, memory_limit=args.memory_limit,
                  **({"coordinator_timeout": args.coordinator_timeout} if args.coordinator_timeout else {}))
    _stop_on_signals(agent, f"agent {args.name}")
    return agent.run()


def data_host_for(coordinator: str) -> str:
    """The address this machine reaches `coordinator` (tcp://HOST:PORT) from: where other nodes can reach its
    channels too, on a LAN; 127.0.0.1 for a coordinator on this machine or one that cannot be resolved (no packet
    is sent: a UDP socket is only connected).

    >>> data_host_for("tcp://127.0.0.1:7077")
    '127.0.0.1'
    """
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(coordinator)
        host, port = parts.hostname or "127.0.0.1", parts.port or 7077
    except ValueError:
        return "127.0.0.1"
    if host in ("localhost", "*", "0.0.0.0") or host.startswith("127."):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _public_from_file(path: str) -> bytes:
    from ..cluster.security import load

    return load(Path(path)).public


def _address(args: argparse.Namespace) -> Any:
    """The coordinator to talk to and how: --coordinator (else the embedded cluster in --home), our key (--key: a
    name in HOME/keys or a key file; $MICROSTREAM_KEY) and the coordinator's public key (--coordinator-key, else
    coordinator.key beside our key file, else in HOME/keys)."""
    from ..cluster.client import ClusterAddress, ClusterError
    from ..cluster.embedded import address, coordinator_public, read_state, state_file
    from ..cluster.security import SECRET_SUFFIX, KeyStore, load

    root = _home(args)
    key = args.key
    by_path = "/" in key or key.endswith(SECRET_SUFFIX)
    if not by_path and not args.coordinator_key:
        return address(root, args.coordinator, args.insecure, key_name=key)
    endpoint = args.coordinator or (read_state(root) or {}).get("coordinator")
    if endpoint is None:
        raise ClusterError(f"no cluster: none recorded in {state_file(root)} and no --coordinator given")
    if args.insecure:
        return ClusterAddress(endpoint)
    store = KeyStore(root / "keys")
    try:
        pair = _key_pair(store, key)
        if args.coordinator_key:
            server = load(Path(args.coordinator_key).expanduser()).public
        elif by_path and any((Path(key).expanduser().parent / f).exists()
                             for f in ("coordinator.key", "trusted/coordinator.key")):
            server = coordinator_public(Path(key).expanduser().parent)
        else:
            server = coordinator_public(store.root)
    except Exception as exc:
        raise ClusterError(f"cannot load keys: {exc}") from exc
    return ClusterAddress(endpoint, pair, server)


def _interrupt_on_sigterm() -> None:
    """SIGTERM ends a foreground command as Ctrl-C does (its clean-up runs)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_submit(args: argparse.Namespace) -> int:
    from ..cluster.client import Client, ClusterError

    addr = _address(args)

    submitted: list[str] = []

    def accepted(job: str) -> None:  # the id first, on stdout: to re-attach with, whatever happens to this wait
        submitted.append(job)
        print(job, flush=True)

    def runner(pipeline: Any, **_: Any) -> Any:
        try:
            with Client(addr) as client:
                job, result = client.submit(pipeline, wait=not args.detach, timeout=args.timeout, accepted=accepted,
                                            progress=lambda text: print(text, file=sys.stderr, flush=True))
        except ClusterError as exc:  # the cluster's answer (or its silence), not an error in the script
            print(f"microstream: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_FAILED) from None
        if result is not None:
            print(result.summary(), file=sys.stderr)
            return result
        from ..runtime.results import RunResult

        return RunResult(pipeline.name, 0.0)

    _interrupt_on_sigterm()
    try:
        return run_script(args.script, runner)
    except KeyboardInterrupt:
        if not submitted:
            print("microstream: interrupted before the job was submitted: nothing runs", file=sys.stderr)
        for job in submitted:
            print(f"microstream: interrupted: job {job} keeps running on the cluster; stop it with `microstream stop "
                  f"{job}`, or wait for it again with `microstream status {job} --wait`", file=sys.stderr)
        return 130


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from ..cluster.client import Client

    if args.wait and args.job is None:
        print("microstream: status --wait needs a JOB: `microstream status JOB --wait`", file=sys.stderr)
        return EXIT_USAGE
    if args.timeout is not None and not args.wait:  # it would be ignored
        print("microstream: status --timeout goes with --wait: `microstream status JOB --wait --timeout S`",
              file=sys.stderr)
        return EXIT_USAGE
    if args.watch is not None:
        return _watch_status(args)
    with Client(_address(args)) as client:
        if args.wait:
            return _attach(client, args.job, args.timeout)
        status = client.status(args.job)
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(format_status(status, nodes=args.job is None))
    return EXIT_OK


def _watch_status(args: argparse.Namespace) -> int:
    """`status --watch [SECONDS]`: the status again every SECONDS until Ctrl-C (the screen redrawn in a terminal)."""
    import json
    import time

    from ..cluster.client import Client, ClusterError

    every = max(0.2, args.watch)
    clear = sys.stdout.isatty()
    address = _address(args)
    try:
        while True:
            try:
                with Client(address, timeout=max(2.0, every)) as client:
                    status = client.status(args.job)
                text = json.dumps(status) if args.json else format_status(status, nodes=args.job is None)
            except ClusterError as exc:  # a coordinator restarting: say so, and keep watching
                if args.json:  # stdout stays one JSON document a line
                    print(f"microstream: no status: {exc}", file=sys.stderr, flush=True)
                    time.sleep(every)
                    continue
                text = f"(no status: {exc})"
            header = "" if args.json else f"{time.strftime('%H:%M:%S')}  every {every:g} s, Ctrl-C to stop\n"
            print(("\x1b[H\x1b[2J" if clear else "") + header + text, flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        return EXIT_OK


def _attach(client: Any, job: str, timeout: float | None) -> int:
    """Wait for `job`'s end (`status JOB --wait`): print how it ended; exit 0 if it finished."""
    from types import SimpleNamespace

    from ..cluster.client import results_of
    from ..runtime.results import merge_results

    done = client.attach(job, timeout=timeout, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"{job}: {done.state}{f' ({done.reason})' if done.reason else ''}")
    if done.state != "finished":
        return EXIT_FAILED
    no_sinks: Any = SimpleNamespace(name=job, nodes={})  # the counts only: the pipeline's sinks are not here
    total = merge_results(no_sinks, results_of(done), 0.0)
    total.seconds = total.flow_seconds or 0.0  # this wait did not see the job start: how long its records flowed
    print(total.summary(), file=sys.stderr)
    return EXIT_OK


def format_status(status: dict[str, Any], nodes: bool = True) -> str:
    lines = ["NODES"] if nodes else []
    for name, a in sorted(status["agents"].items()) if nodes else []:
        state = ("up" if not a.get("reason") else f"suspect ({a['reason']})") if a["up"] else f"DOWN ({a['reason']})"
        if a.get("draining"):  # cordoned for maintenance: draining, drained or stuck (`microstream drain`)
            state += f", {a.get('drain', {}).get('state', 'draining')}"
        backends = ",".join(a["backends"] or [])
        lines.append(f"  {name:<12} {state:<24} {a['cores']} cores {a['arch']}  backends={backends}"
                     f"  metrics=:{a['metrics_port']}")
    lines.append("JOBS")
    for job_id, job in status["jobs"].items():
        reason = f" ({job['reason']})" if job["reason"] else ""
        lines.append(f"  {job_id}  {job['state']}{reason}")
        if job.get("health"):  # a running job: moving, idle, backpressured or stalled (docs/faults.md)
            lines.append(f"    health: {job['health']['line']}")
        if nodes and job["state"] in ("finished", "failed", "stopped"):
            continue  # an ended job in the cluster's list: one line (`microstream status JOB` shows the rest)
        for vn, info in job["vnodes"].items():
            lines.append(f"    {vn} on {info['agent']} [{info['state'] or '-'}]: {', '.join(info['tasks'])}")
            for op in info["operators"].values():
                wm = op["watermark"]
                wm_text = "-" if wm is None or abs(wm) >= 2**62 else format_time(wm)
                rate = f"  {op['rate']:>9,.0f}/s" if op.get("rate") is not None else ""
                lines.append(f"      {op['operator']:<24} in {op['records_in']:>10,}  out {op['records_out']:>10,}"
                             f"{rate}  watermark {wm_text}")
            if info.get("dead_letters"):  # bad input is kept aside, not lost: say how much, and the newest reason
                newest = (info.get("dead_recent") or [{}])[-1]
                why = f" (newest: {newest.get('operator', '?')}: {newest.get('reason', '')})" if newest else ""
                lines.append(f"      dead letters {info['dead_letters']:,}{why}")
        lines += _traffic_lines(job) + _move_lines(job)
    return "\n".join(lines)


def _traffic_lines(job: dict[str, Any]) -> list[str]:
    """Measured traffic per link between nodes (what placement tries to keep low), and how much stays on a node."""
    links: dict[tuple[str, str], list[Any]] = {}
    local = 0.0
    for row in job.get("traffic") or []:
        if not row.get("crosses_link"):
            local += row["bytes_per_s"]
            continue
        entry = links.setdefault((row["from_node"] or "?", row["to_node"] or "?"), [0.0, []])
        entry[0] += row["bytes_per_s"]
        entry[1].append(f"{row['from']}->{row['to']}")
    if not links and not local:
        return []
    lines = ["    traffic between nodes:" if links else "    traffic between nodes: none"]
    for (a, b), (rate, pairs) in sorted(links.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"      {a + ' -> ' + b:<24} {_rate(rate):>12}  ({', '.join(pairs[:6])}"
                     f"{' ...' if len(pairs) > 6 else ''})")
    lines.append(f"      {'within nodes':<24} {_rate(local):>12}")
    return lines


def _move_lines(job: dict[str, Any]) -> list[str]:
    """The job's moves, newest last: what moved where, why, and what it cost (the last 10)."""
    moves = job.get("migrations") or []
    if not moves:
        return []
    lines = [f"    moves ({len(moves)}{', the last 10' if len(moves) > 10 else ''}):"]
    for m in moves[-10:]:
        held = f"inputs held {m['downtime_s'] * 1000:.0f} ms" if m.get("downtime_s") is not None else "no records held"
        lines.append(f"      {m['vnode']} {m.get('mode', 'migrate')} {m.get('from') or '-'} -> {m.get('to') or '-'}  "
                     f"{m.get('reason') or ''}; {held}, state {_bytes(m.get('state_bytes') or 0)}, "
                     f"{m.get('total_s', 0):.2f} s")
    return lines


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _rate(bytes_per_s: float) -> str:
    return _bytes(bytes_per_s) + "/s"


def format_time(ns: int) -> str:
    from ..core.time import format_ns

    return format_ns(ns)


def cmd_logs(args: argparse.Namespace) -> int:
    """What a job's virtual nodes printed (the last lines the coordinator keeps); --follow: then each new line,
    until the job ends (exit 0 if it finished, 1 if not)."""
    from ..cluster.client import Client, kept_lines, print_output

    if args.timeout is not None and not args.follow:  # it would be ignored
        print("microstream: logs --timeout goes with --follow: `microstream logs JOB --follow --timeout S`",
              file=sys.stderr)
        return EXIT_USAGE
    with Client(_address(args)) as client:
        if args.follow:
            done = client.follow(args.job, vnode=args.vnode, timeout=args.timeout)
            print(f"{args.job}: {done.state}{f' ({done.reason})' if done.reason else ''}", file=sys.stderr)
            return EXIT_OK if done.state == "finished" else EXIT_FAILED
        for stream, line in kept_lines(client.logs(args.job), args.vnode):
            print_output(stream, line)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from ..cluster.client import Client

    with Client(_address(args)) as client:
        reply = client.stop(args.job)
    print(f"{reply['job']}: {reply['state']}")
    return EXIT_OK


def _known_job(client: Any, job: str) -> None:
    """Ask the coordinator about `job` (its usual 10 s for an answer) before a request that may wait 120 s for its
    move to be done: an unreachable coordinator, keys it does not trust and a job it does not know are said at once."""
    client.status(job)


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..cluster.client import Client

    with Client(_address(args)) as client:
        _known_job(client, args.job)
        r = client.migrate(args.job, args.vnode, args.to, whole=args.whole_vm)
    paused = f"{r['downtime_s'] * 1000:.0f} ms" if r.get("downtime_s") is not None else "n/a (no records followed)"
    how = ""  # how the state travelled (cluster/moves.py `_state_figures`)
    if r.get("transfer") == "direct":
        how = f", sent directly: {r.get('final_bytes') or 0:,} at the barrier"
    elif r.get("transfer") == "coordinator":
        how = ", through the coordinator"
    if r.get("precopy_fallback") or r.get("direct_fallback"):
        how += f"; {r.get('precopy_fallback') or r.get('direct_fallback')}"
    print(f"{args.job}/{args.vnode}: {r['from']} -> {r['to']} in {r['total_s']:.2f} s "
          f"(inputs held {paused}, state {r.get('state_bytes') or 0:,} bytes"
          f"{', whole VM' if r.get('tier') == 2 else how})")
    return EXIT_OK


def cmd_save(args: argparse.Namespace) -> int:
    from ..cluster.client import Client

    folder = args.file.parent
    if args.file.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        print(f"microstream: cannot write the snapshot to {args.file}: name a file in an existing directory you may "
              "write to (nothing was stopped)", file=sys.stderr)
        return EXIT_USAGE
    with Client(_address(args)) as client:
        _known_job(client, args.job)
        _, snapshot = client.save(args.job, args.vnode)
    args.file.write_bytes(snapshot)
    print(f"saved {args.job}/{args.vnode} to {args.file} ({len(snapshot):,} bytes); its upstream holds new records "
          f"until `microstream restore {args.job} {args.vnode} {args.file}`")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from ..cluster.client import Client

    if not args.file.is_file():
        print(f"microstream: no such snapshot file: {args.file} (the file `microstream save` wrote)", file=sys.stderr)
        return EXIT_USAGE
    with Client(_address(args)) as client:
        _known_job(client, args.job)
        r = client.restore(args.job, args.vnode, args.file.read_bytes(), to=args.to)
    print(f"restored {args.job}/{args.vnode} on {r['to']}")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from .placement import run_plan

    return run_plan(args.script, args.topology, explain=args.explain, svg=args.svg, solver=args.solver,
                    as_json=args.json)


def cmd_topology(args: argparse.Namespace) -> int:
    from .placement import run_topology

    return run_topology(args.action, args.file, as_json=args.json)


def cmd_image(args: argparse.Namespace) -> int:
    from ..unikernel_backend.image import main as image_main

    return int(image_main(args.rest) or 0)


def cmd_service(args: argparse.Namespace) -> int:
    from .service import main as service_main

    return service_main(args.rest)


def cmd_keys(args: argparse.Namespace) -> int:
    from ..cluster.security import keys_main

    return keys_main(args.rest)


def cmd_cluster(args: argparse.Namespace) -> int:
    from ..cluster import embedded as cluster

    root = _home(args)
    if args.action == "down":
        return cluster.down(root, progress=lambda t: print(t, file=sys.stderr))
    if args.detach:
        cluster.up(args.nodes, root, port=args.port, insecure=args.insecure,
                   progress=lambda t: print(t, file=sys.stderr))
        return EXIT_OK
    import signal
    import time

    _interrupt_on_sigterm()  # SIGTERM (or a closed terminal) stops it in order, as Ctrl-C does, even while starting
    signal.signal(signal.SIGHUP, signal.getsignal(signal.SIGTERM))
    ours = cluster.read_state(root) is None  # a cluster already running (up refuses it) is not ours to stop
    try:
        cluster.up(args.nodes, root, port=args.port, insecure=args.insecure,
                   progress=lambda t: print(t, file=sys.stderr))
        ours = True
        print("press Ctrl-C to stop the cluster", file=sys.stderr)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if ours and cluster.read_state(root) is not None:
            cluster.down(root, progress=lambda t: print(t, file=sys.stderr))
    return EXIT_OK


def _policy_options(p: argparse.ArgumentParser) -> None:
    from ..placement.policy import PolicyParams

    d = PolicyParams()
    p.add_argument("--no-auto-place", action="store_true", help="never move virtual nodes on its own")
    p.add_argument("--replace-every", type=float, default=d.every, metavar="S",
                   help="seconds between re-placement checks (default %(default)s)")
    p.add_argument("--min-gain", type=float, default=d.min_gain, metavar="B/S",
                   help="cross-node bytes/s a move must save (default %(default)s)")
    p.add_argument("--confirm", type=int, default=d.confirm, metavar="N",
                   help="checks in a row that must agree (default %(default)s)")
    p.add_argument("--cooldown", type=float, default=d.cooldown, metavar="S",
                   help="seconds before a virtual node may move again (default %(default)s)")


def _discovery_options(p: argparse.ArgumentParser) -> None:
    from ..cluster.discovery import DEFAULT_PORT

    p.add_argument("--interface", metavar="IP", help="network interface (its address) for the multicast beacon")
    p.add_argument("--beacon-port", type=port, default=DEFAULT_PORT, metavar="PORT",
                   help="UDP port of the beacon (default %(default)s)")


def _metrics_bind_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDRESS",
                   help="address the metrics port listens on (default %(default)s: this machine only; 0.0.0.0 or the "
                        "LAN address for a Prometheus server on another machine)")


def _cluster_options(p: argparse.ArgumentParser, coordinator: bool = True) -> None:
    if coordinator:
        p.add_argument("--coordinator", metavar="tcp://HOST:PORT", type=zmq_address,
                       help="coordinator address (default: the embedded cluster recorded in --home)")
        p.add_argument("--key", default=os.environ.get("MICROSTREAM_KEY") or "client", metavar="NAME|PATH",
                       help="your key: a name in HOME/keys (NAME.key_secret) or a .key_secret file, trusted on the "
                            "coordinator with a role that may do this (default: $MICROSTREAM_KEY, else client)")
        p.add_argument("--coordinator-key", metavar="FILE",
                       help="the coordinator's public key (default: coordinator.key beside your key, else in "
                            "HOME/keys)")
    p.add_argument("--home", metavar="DIR", help="cluster home with keys and state (default $MICROSTREAM_HOME or "
                                                "~/.microstream)")
    p.add_argument("--insecure", action="store_true", help="plaintext ZeroMQ, no authentication (unsafe)")


EXAMPLES = {  # shown under each verb's --help
    "run": ["microstream run examples/sensors/rooms.py", "microstream run job.py --describe --graph job.svg -q"],
    "describe": ["microstream describe job.py"],
    "graph": ["microstream graph job.py -o pipeline.svg", "microstream graph job.py -o pipeline.dot"],
    "coordinator": ["microstream coordinator --bind tcp://0.0.0.0:7077 --topology campus.toml",
                    "microstream coordinator --config /etc/microstream/coordinator.toml"],
    "agent": ["microstream agent --coordinator tcp://pi01:7077 --name pi07 --label site=library",
              "microstream agent --bundle pi07.bundle"],
    "submit": ["microstream submit job.py", "microstream submit job.py --detach --coordinator tcp://pi01:7077"],
    "status": ["microstream status", "microstream status rooms-1 --wait", "microstream status --json",
               "microstream status --watch 5"],
    "logs": ["microstream logs rooms-1", "microstream logs rooms-1 vn1 --follow"],
    "stop": ["microstream stop rooms-1"],
    "plan": ["microstream plan job.py --topology campus.toml --explain --svg placement.svg",
             "microstream plan job.py --topology campus.toml --json"],
    "topology": ["microstream topology check campus.toml", "microstream topology show campus.toml",
                 "microstream topology show campus.toml --json"],
    "migrate": ["microstream migrate rooms-1 vn3 --to pi07"],
    "drain": ["microstream drain pi07", "microstream undrain pi07"],
    "undrain": ["microstream undrain pi07"],
    "save": ["microstream save rooms-1 vn3 vn3.snapshot"],
    "restore": ["microstream restore rooms-1 vn3 vn3.snapshot --to pi08"],
    "cluster": ["microstream cluster up --nodes 3 --detach", "microstream cluster down"],
    "console": ["microstream console"],
}

EXIT_CODES = ("exit codes: 0 success; 1 a failure while running (a job failed, the coordinator cannot be reached, a "
              "check failed); 2 the command line, the pipeline script or a file it names is wrong; 130 interrupted "
              "(Ctrl-C).")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, but an epilog of examples keeps its lines (one command each)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


class _Verbs:
    """`add_parser` of the subcommands, giving each verb a description (its one-line help, so that `microstream VERB
    --help` says what it does) and its EXAMPLES. Verbs with their own parser (add_help=False) are left as they are."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("add_help", True):
            text = kwargs.get("help") or ""
            kwargs.setdefault("description", text[:1].upper() + text[1:] + ("." if text else ""))
            if name in EXAMPLES:
                kwargs.setdefault("epilog", "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]))
            kwargs.setdefault("formatter_class", _HelpFormatter)
        parser: argparse.ArgumentParser = self.sub.add_parser(name, **kwargs)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microstream", description="Stream processing for sensor networks.",
                                     epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"microstream {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(verbs=subparsers.choices)  # verb -> its parser: a config file sets the defaults of `agent`
    sub = _Verbs(subparsers)

    p = sub.add_parser("run", help="run a pipeline script on the local runtime")
    p.add_argument("script", type=Path, help="a pipeline script (Python; it ends with p.run())")
    p.add_argument("--describe", action="store_true", help="print the operator table first")
    p.add_argument("--graph", type=Path, metavar="FILE", help="also write the DAG (.svg or .dot)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but errors: no progress line, no report (they show only in a terminal)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("describe", help="print a script's operators and schemas without running it")
    p.add_argument("script", type=Path, help="a pipeline script (built, not run)")
    p.set_defaults(fn=cmd_describe)

    p = sub.add_parser("graph", help="write a script's DAG as SVG or DOT without running it")
    p.add_argument("script", type=Path, help="a pipeline script (built, not run)")
    p.add_argument("-o", "--output", type=Path, default=Path("pipeline.svg"),
                   help="output file (.svg or .dot; default %(default)s)")
    p.set_defaults(fn=cmd_graph)

    from ..cluster.registry import AGENT_TIMEOUT

    p = sub.add_parser("coordinator", help="run a coordinator")
    p.add_argument("--bind", default="tcp://127.0.0.1:7077", type=zmq_address, metavar="tcp://HOST:PORT",
                   help="address to listen on (default %(default)s: this machine only; for agents and clients on other "
                        "machines: --bind tcp://0.0.0.0:7077 or the LAN address)")
    p.add_argument("--keys", metavar="DIR", help="key directory (default HOME/keys): coordinator.key_secret and "
                                                 "trusted/ public keys of agents and clients")
    p.add_argument("--key", help=argparse.SUPPRESS)
    _config_option(p, "coordinator")
    _memory_option(p)
    p.add_argument("--metrics-port", type=port, default=9464, metavar="PORT",
                   help="Prometheus metrics port (0: any free port)")
    _metrics_bind_option(p)
    p.add_argument("--max-message", type=float, default=256, metavar="MB",
                   help="largest message accepted (a submitted job, a checkpoint); larger frames are refused before "
                        "they are read, authenticated or not (default %(default)g MB)")
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    p.add_argument("--beacon", action="store_true", help="announce this coordinator on the LAN by multicast")
    _discovery_options(p)
    _policy_options(p)
    p.add_argument("--topology", type=Path, metavar="FILE", help="a topology TOML file (links, sites, sensors) "
                                                                 "for placement; agents add what they report")
    p.add_argument("--agent-timeout", type=float, default=AGENT_TIMEOUT, metavar="S",
                   help="seconds without a heartbeat after which an agent counts as lost and its jobs recover "
                        "(default %(default)s: rides out Wi-Fi hiccups and SD-card stalls)")
    p.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                   help="also write every completed checkpoint here (e.g. an NFS mount); kept in memory anyway")
    p.add_argument("--checkpoint-replicas", type=int, default=1, metavar="N",
                   help="agents that keep a copy of every completed checkpoint (with the job), so that a coordinator "
                        "that lost its state directory restores its jobs from them (default %(default)s; 0: none)")
    p.add_argument("--node", metavar="NAME",
                   help="the agent on this coordinator's machine, if any: replicas go to other nodes first "
                        "(default: an agent named as this machine's hostname)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where jobs, placements, epochs and the last checkpoints persist (SQLite), so that a "
                        "restarted coordinator carries on with its agents (default HOME/state)")
    p.add_argument("--no-state", action="store_true", help="persist nothing: a restart forgets every job")
    p.add_argument("--keep-jobs", type=int, default=100, metavar="N",
                   help="ended jobs kept in memory for `status` (default %(default)s; older ones stay in the state "
                        "directory: `microstream status JOB`)")
    p.add_argument("--adopt-grace", type=float, metavar="S",
                   help="after a restart, seconds a job's hosts have to be reported by their agents before the job "
                        "recovers from its last checkpoint (default: --agent-timeout)")
    _cluster_options(p, coordinator=False)
    from ..console import add_options as console_options

    console_options(p)
    p.set_defaults(fn=cmd_coordinator)

    p = sub.add_parser("agent", help="run an agent on this physical node")
    p.add_argument("--coordinator", metavar="tcp://HOST:PORT", type=zmq_address,
                   help="coordinator address (default: discover by "
                                                                     "multicast beacon)")
    _config_option(p, "agent")
    p.add_argument("--bundle", type=Path, metavar="FILE",
                   help="a key bundle from `microstream keys bundle NODE`: its key pair, the coordinator's public key "
                        "and its configuration (the config file and the options here override it)")
    p.add_argument("--name", help="this node's name (used by at= placement hints); required, here or in the "
                                  "config file")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="a label, e.g. site=library")
    p.add_argument("--keys", metavar="DIR", help="key directory (default HOME/keys)")
    p.add_argument("--key", metavar="NAME|PATH",
                   help="this agent's key: a name in the key directory or a .key_secret file (default: --name)")
    p.add_argument("--coordinator-key", metavar="FILE", help="the coordinator's public key file")
    p.add_argument("--data-host", metavar="HOST",
                   help="address other nodes reach this node's channels on (default: the address this machine reaches "
                        "the coordinator from; 127.0.0.1 for a local one)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="where the hosts' sockets and logs go: a private subdirectory per run, removed at stop "
                        "(default: one in the temporary directory)")
    p.add_argument("--replica-dir", type=Path, metavar="DIR",
                   help="where this agent keeps the coordinator's checkpoint replicas; they outlive the agent "
                        "(default: WORK_DIR/replicas, or HOME/replicas/NAME)")
    _memory_option(p)
    p.add_argument("--metrics-port", type=port, default=0, metavar="PORT",
                   help="Prometheus metrics port (0: any free port)")
    _metrics_bind_option(p)
    p.add_argument("--discover-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for a beacon (default %(default)g)")
    p.add_argument("--coordinator-timeout", type=float, metavar="S",
                   help="seconds without a word from the coordinator before registering again (default 10); the "
                        "agent and its hosts never stop because the coordinator is gone")
    _discovery_options(p)
    _cluster_options(p, coordinator=False)
    p.set_defaults(fn=cmd_agent)

    p = sub.add_parser("submit", help="run a pipeline script on the cluster (prints the job id first)")
    p.add_argument("script", type=Path, help="a pipeline script (Python; it ends with p.run())")
    p.add_argument("--detach", action="store_true", help="return once the job is deployed")
    p.add_argument("--timeout", type=seconds, metavar="S",
                   help="stop waiting after S seconds (the job goes on; `microstream status JOB --wait` waits again)")
    _cluster_options(p)
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("status", help="show nodes, jobs and where their virtual nodes run (JOB: that job; "
                                      "--wait: wait for its end)")
    p.add_argument("job", nargs="?", help="a job id (as `submit` printed it); an ended one too")
    p.add_argument("--json", action="store_true", help="the whole status as JSON (with --watch: one line each time)")
    p.add_argument("--wait", action="store_true", help="re-attach to JOB: wait for its end and say how it ended")
    p.add_argument("--timeout", type=seconds, metavar="S", help="with --wait: stop waiting after S seconds")
    p.add_argument("--watch", type=seconds, nargs="?", const=2.0, metavar="SECONDS",
                   help="show it again every SECONDS (default 2) until Ctrl-C")
    _cluster_options(p)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("logs", help="show what a job's virtual nodes printed (--follow: and what they print next)")
    p.add_argument("job", help="a job id (as `submit` printed it); an ended one too")
    p.add_argument("vnode", nargs="?", help="only this virtual node's lines, e.g. vn1")
    p.add_argument("--follow", "-f", action="store_true", help="keep showing new lines until the job ends")
    p.add_argument("--timeout", type=seconds, metavar="S", help="with --follow: stop after S seconds")
    _cluster_options(p)
    p.set_defaults(fn=cmd_logs)

    p = sub.add_parser("stop", help="stop a job")
    p.add_argument("job", help="a job id (as `submit` printed it)")
    _cluster_options(p)
    p.set_defaults(fn=cmd_stop)

    from .placement import plan_parser, topology_parser

    p = plan_parser(sub.add_parser("plan", help="show where a pipeline's operators would run on a topology, "
                                                "with traffic per link, latency and load (--explain, --svg)"))
    p.set_defaults(fn=cmd_plan)
    p = topology_parser(sub.add_parser("topology", help="check or show a topology file (topology check FILE)"))
    p.set_defaults(fn=cmd_topology)

    p = sub.add_parser("migrate", help="move a running virtual node to another node (no record lost or repeated)")
    p.add_argument("job", help="a job id (as `submit` printed it)")
    p.add_argument("vnode", help="virtual node id, e.g. vn3 (see `microstream status`)")
    p.add_argument("--to", required=True, metavar="NODE", help="the agent to move it to")
    p.add_argument("--whole-vm", action="store_true",
                   help="microvm virtual nodes: move the VM itself, live, with QEMU's migration stream")
    _cluster_options(p)
    p.set_defaults(fn=cmd_migrate)

    from .drain import add_parsers as drain_parsers

    drain_parsers(sub, _cluster_options, _address)

    p = sub.add_parser("save", help="stop a virtual node at a barrier and save its state to a file")
    p.add_argument("job", help="a job id (as `submit` printed it)")
    p.add_argument("vnode", help="virtual node id, e.g. vn3 (see `microstream status`)")
    p.add_argument("file", type=Path, help="where to write its state")
    _cluster_options(p)
    p.set_defaults(fn=cmd_save)

    p = sub.add_parser("restore", help="resume a saved virtual node from its file")
    p.add_argument("job", help="a job id (as `submit` printed it)")
    p.add_argument("vnode", help="the virtual node id it was saved from")
    p.add_argument("file", type=Path, help="the file `microstream save` wrote")
    p.add_argument("--to", metavar="NODE", help="the agent to resume it on (default: where it ran)")
    _cluster_options(p)
    p.set_defaults(fn=cmd_restore)

    p = sub.add_parser("service", help="install systemd units: service install agent|coordinator --config FILE "
                                       "(microstream service --help)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_service)

    p = sub.add_parser("image", help="build the microVM image (microstream image build [--arch amd64|arm64])",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_image)

    p = sub.add_parser("warmup", help="compile the numba kernels of a typical job into the cache, once per machine "
                                      "(microstream warmup --help)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)  # handled by microstream.warmup.main (see _DELEGATED)

    p = sub.add_parser("keys", help="create, trust and list CURVE keys (microstream keys --help)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_keys)

    p = sub.add_parser("cluster", help="an embedded cluster on this machine: cluster up --nodes N | cluster down "
                                       "(up again when only its coordinator died restarts that)")
    p.add_argument("action", choices=["up", "down"], help="up: start it (or restart its coordinator); down: stop "
                                                          "every job, agent and the coordinator")
    p.add_argument("--nodes", type=count, default=3, metavar="N",
                   help="agents to start, named node1 .. nodeN (default %(default)s)")
    p.add_argument("--port", type=port, default=0, metavar="PORT",
                   help="coordinator port (default: any free port)")
    p.add_argument("--detach", action="store_true", help="start in the background and return")
    _cluster_options(p, coordinator=False)
    p.set_defaults(fn=cmd_cluster)

    p = sub.add_parser("console", help="print the address of the web console, with its token (docs/console.md)")
    p.add_argument("--home", metavar="DIR", help="the coordinator's home (default $MICROSTREAM_HOME or ~/.microstream)")
    p.set_defaults(fn=cmd_console)
    return parser


def cmd_console(args: argparse.Namespace) -> int:
    from ..console import print_url

    return print_url(_home(args))


_DELEGATED = {"keys": ("microstream.cluster.security", "keys_main"), "service": ("microstream.cli.service", "main"),
              "image": ("microstream.unikernel_backend.image", "main"), "warmup": ("microstream.warmup", "main")}


def main(argv: Sequence[str] | None = None) -> int:
    """The `microstream` command: what its verb returns, 2 for a usage error, 1 for an expected error at run time
    (one line on stderr, no traceback), 130 after Ctrl-C; verbs with their own parser (`keys`, `image`, `service`,
    `warmup`) end the same way."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
        return code
    except BrokenPipeError:  # `microstream status --json | head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except OSError as exc:  # a file or directory that cannot be read or written (`graph -o /read-only/g.svg`)
        print(f"microstream: {_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except MicrostreamError as exc:
        print(f"microstream: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("microstream: interrupted", file=sys.stderr)
        return 130


def _os_error(exc: OSError) -> str:
    """'PATH: No such file or directory' rather than "[Errno 2] No such file or directory: 'PATH'"."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in _DELEGATED:  # verbs with their own parser (and --help)
        import importlib

        module, function = _DELEGATED[argv[0]]
        return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)
    parser = build_parser()
    from ..cluster.config import ConfigError
    from ..cluster.security import KeyFileError

    try:
        args = _parse(parser, argv)
    except (ConfigError, KeyFileError) as exc:
        print(f"microstream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not getattr(args, "fn", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(args.fn(args))


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse the command line; for `agent` and `coordinator`, a --bundle's and a --config file's settings become the
    defaults, so that options given on the command line override them."""
    args = _parse_strictly(parser, argv)
    role = getattr(args, "command", None)
    if role not in ("agent", "coordinator"):
        return args
    from ..cluster import config

    defaults: dict[str, Any] = {}
    if getattr(args, "bundle", None):
        from ..cluster.security import read_bundle

        defaults.update(config.as_arguments(config.check(read_bundle(args.bundle).config, role, args.bundle), role))
    if args.config:
        defaults.update(config.as_arguments(config.load(args.config, role), role))
    if defaults:
        args.verbs[role].set_defaults(**defaults)
        args = _parse_strictly(parser, argv)
    return args


def _parse_strictly(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args`, but an unknown option after a verb is refused with that verb's usage (`microstream run
    --nope x.py`), where argparse would show the top-level usage, which lists no option of the verb."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        verb = args.verbs.get(getattr(args, "command", None), parser)
        verb.error(f"unrecognized arguments: {' '.join(extra)}")  # exits 2
    return args


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so that flushing it at exit raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
