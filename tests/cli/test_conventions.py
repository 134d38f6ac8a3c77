"""The `microstream` command against common command-line conventions, run as a user runs it (a subprocess): every
verb's --help says what it does, with examples; an expected error is one line on stderr with exit 1 or 2, never a
traceback, and comes at once; Ctrl-C ends a command with 130 (verbs with their own parser too); machine-readable
output stays machine-readable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli as cli
from tests.helpers import sigint_as_in_a_shell

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "tcp://127.0.0.1:1"   # nothing listens there: a coordinator that cannot be reached

SCRIPT = """
import microstream as ms
p = ms.Pipeline("job")
p.from_iterable([{"v": 1.0}]).sink(ms.sinks.collect())
p.run()
"""


def _popen(*args: str, home: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "microstream.cli", *args], cwd=ROOT,
                            env={**os.environ, "MICROSTREAM_HOME": str(home), **kw.pop("env", {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _verbs() -> list[str]:
    """The verbs `microstream --help` lists (and the aliases it shows)."""
    r = cli("--help")
    listing = r.stdout.split("  COMMAND\n", 1)[1].split("\noptions:")[0]
    found = re.findall(r"^    (\w+)(?: \((\w+)\))?", listing, flags=re.M)
    return [name for pair in found for name in pair if name]


def _help_says_what_it_does(verb: list[str], r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0 and not r.stderr, (verb, r.stderr)
    assert r.stdout.startswith("usage: microstream "), (verb, r.stdout)
    after_usage = r.stdout.split("\n\n")[1]
    assert not after_usage.startswith(("positional arguments", "options")), (verb, r.stdout)  # a description


def test_a_verbs_help_says_what_it_does_and_shows_examples():
    for verb in (["run", "--help"], ["drain", "-h"], ["plan", "--help"]):
        r = cli(*verb)
        _help_says_what_it_does(verb, r)
        assert "\nexamples:\n  microstream " in r.stdout, r.stdout
        if verb[0] == "plan":
            assert "--topology FILE" in r.stdout and "--svg FILE" in r.stdout  # FILE, as every other verb says
        if verb[0] == "drain":
            assert "-q, --quiet" in r.stdout  # as `run -q`
    top = cli("--help").stdout
    assert "exit codes: 0 success" in top and "130" in top


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """`microstream ARGS` through the CLI's own entry point in this process (a start-up per verb and flag took
    most of a minute in CI; test_a_verbs_help_says_what_it_does_and_shows_examples runs real processes)."""
    from microstream.cli.main import main

    try:
        code = main(list(args))
    except SystemExit as exc:               # argparse ends --help with exit 0
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def test_every_verb_and_sub_verb_says_what_it_does_under_help_and_h(capsys):
    verbs = _verbs()
    assert {"run", "submit", "status", "drain", "undrain", "uncordon", "keys", "service", "cluster"} <= set(verbs)
    nested = {"keys": ["create", "trust", "revoke", "bundle", "unbundle", "list"], "image": ["build"],
              "service": ["install", "show"]}
    for verb in verbs:
        for flag in ("--help", "-h"):
            _help_says_what_it_does([verb, flag], _in_process(capsys, verb, flag))
        for action in nested.get(verb, []):
            r = _in_process(capsys, verb, action, "--help")
            _help_says_what_it_does([verb, action], r)
            assert f"microstream {verb} {action}" in r.stdout.split("\nexamples:\n  ")[1], (verb, action, r.stdout)


def test_status_wait_without_a_job_is_a_usage_error_before_any_lookup(tmp_path):
    r = subprocess.run([sys.executable, "-m", "microstream.cli", "status", "--wait", "--home", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "needs a JOB" in r.stderr and not r.stdout, r.stderr   # not 'no cluster' (1)


def test_logs_takes_a_key_file_as_every_other_client_verb(tmp_path):
    missing = str(tmp_path / "me.key_secret")
    for verb in (["logs", "job-1"], ["stop", "job-1"]):
        r = cli(*verb, "--key", missing, "--coordinator", NOWHERE, "--home", str(tmp_path))
        assert r.returncode == 1 and f"key file {missing}: does not exist" in r.stderr, (verb, r.stderr)
        assert "bad key name" not in r.stderr and "Traceback" not in r.stderr


def test_a_coordinators_missing_or_invalid_topology_is_a_usage_error_as_for_plan(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[nodes]\nname=")
    for topology, says in ((tmp_path / "missing.toml", "no such topology file"), (bad, "not valid TOML")):
        r = cli("coordinator", "--insecure", "--no-state", "--bind", "tcp://127.0.0.1:0", "--metrics-port", "0",
                "--topology", str(topology), "--home", str(tmp_path))
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_status_watch_json_keeps_stdout_json_and_ctrl_c_ends_it(tmp_path):
    watch = _popen("status", "--watch", "0.2", "--json", "--insecure", "--coordinator", NOWHERE, home=tmp_path,
                   preexec_fn=sigint_as_in_a_shell)
    try:
        assert watch.stderr is not None
        line = watch.stderr.readline()   # the first look fails (after the client's 2 s): said on stderr
        assert line.startswith("microstream: no status: no answer from the coordinator"), line
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0 and "Traceback" not in err, err   # Ctrl-C is how --watch ends
    assert out == ""   # nothing that is not JSON on stdout


def test_ctrl_c_on_a_verb_with_its_own_parser_exits_130_without_a_traceback(tmp_path):
    # `warmup` is handed to microstream.warmup.main: Ctrl-C (to the terminal's process group) while it compiles
    warmup = _popen("warmup", home=tmp_path, env={"NUMBA_CACHE_DIR": str(tmp_path / "numba")},
                    start_new_session=True)
    try:
        assert warmup.stdout is not None
        assert warmup.stdout.readline().startswith("warming numba's cache")
        assert warmup.stdout.readline().startswith("[1/")   # a group is compiling in its own process
        os.killpg(warmup.pid, signal.SIGINT)
        out, err = warmup.communicate(timeout=60)
    finally:
        if warmup.poll() is None:
            os.killpg(warmup.pid, signal.SIGKILL)
    assert warmup.returncode == 130, err
    assert err.strip().splitlines()[-1] == "microstream: interrupted" and "Traceback" not in err, err


@pytest.mark.slow  # each waits the client's 10 s for an answer that never comes
def test_an_unreachable_coordinator_is_one_line_after_the_usual_wait_for_every_verb(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    snapshot = tmp_path / "vn1.snapshot"
    snapshot.write_bytes(b"x")
    verbs = [["submit", str(script)], ["migrate", "job-1", "vn1", "--to", "pi2"],
             ["save", "job-1", "vn1", str(tmp_path / "out.snapshot")], ["restore", "job-1", "vn1", str(snapshot)]]
    running = [_popen(*verb, "--insecure", "--coordinator", NOWHERE, home=tmp_path) for verb in verbs]
    for verb, proc in zip(verbs, running, strict=True):
        try:
            out, err = proc.communicate(timeout=100)   # a hang guard: migrate, save and restore used to wait 120 s
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1 and not out, (verb, err)
        # the coordinator's usual wait (not the 120 s a move may take), and not as an error at the script's line
        assert err.splitlines() == [f"microstream: no answer from the coordinator at {NOWHERE} within 10 s: is it "
                                    "running, do you have its public key, and is your key trusted there "
                                    "(`microstream keys trust`)?"], (verb, err)
    assert not (tmp_path / "out.snapshot").exists()


def _one_line(r: subprocess.CompletedProcess, code: int, says: str) -> None:
    assert r.returncode == code and r.stderr.count("\n") == 1 and says in r.stderr, (r.returncode, r.stderr)
    assert r.stderr.startswith("microstream: ") and "Traceback" not in r.stderr and not r.stdout


def test_a_file_that_cannot_be_read_or_written_is_one_line_not_a_traceback(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    _one_line(cli("graph", str(script), "-o", str(a_file / "g.svg")), 1, str(a_file))
    _one_line(cli("plan", str(script), "--topology", str(tmp_path)), 2, "cannot read the topology file")
    _one_line(cli("topology", "check", str(tmp_path)), 1, "cannot read the topology file")


def test_save_refuses_a_file_it_cannot_write_before_stopping_anything_and_restore_a_directory(tmp_path):
    # no coordinator listens: the refusals come before any request (else: 10 s, and the message that says so)
    nowhere = ("--insecure", "--coordinator", NOWHERE)
    _one_line(cli("save", "job-1", "vn1", str(tmp_path / "no-such-dir" / "vn1.snapshot"), *nowhere), 2,
              "nothing was stopped")
    _one_line(cli("restore", "job-1", "vn1", str(tmp_path), *nowhere), 2, "no such snapshot file")


def test_a_coordinator_address_is_checked_as_the_command_line_is_read(tmp_path):
    for verb in (["agent", "--name", "pi1", "--insecure"], ["status"]):
        r = cli(*verb, "--coordinator", "pi01:7077", "--home", str(tmp_path))
        assert r.returncode == 2 and "'pi01:7077' is not an address: write tcp://HOST:PORT" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    # well formed, but not an address of this machine: one line, exit 1
    r = cli("coordinator", "--insecure", "--no-state", "--metrics-port", "0", "--bind", "tcp://256.1.1.1:7077",
            "--home", str(tmp_path))
    assert r.returncode == 1 and "cannot listen on tcp://256.1.1.1:7077" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_value_is_a_usage_error_with_the_verbs_usage_before_anything_starts(tmp_path):
    for verb, says in ((["cluster", "up", "--nodes", "-1"], "argument --nodes: '-1': give a number 0 or more"),
                       (["status", "--watch", "0"], "argument --watch: '0': give a number of seconds above 0"),
                       (["coordinator", "--metrics-port", "70000"], "'70000': a port is 0 (any free one) to 65535")):
        r = cli(*verb, "--home", str(tmp_path))
        assert r.returncode == 2 and f"usage: microstream {verb[0]}" in r.stderr and says in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not r.stdout
    assert not list(tmp_path.iterdir())   # no cluster started, no state written


def test_a_timeout_without_the_wait_it_bounds_is_a_usage_error_not_ignored(tmp_path):
    for verb, says in ((["status", "job-1", "--timeout", "5"], "status --timeout goes with --wait"),
                       (["logs", "job-1", "--timeout", "5"], "logs --timeout goes with --follow")):
        _one_line(cli(*verb, "--home", str(tmp_path)), 2, says)   # before any lookup: no cluster in this home


def test_verbs_with_their_own_parser_follow_the_conventions_too(tmp_path):
    # a usage error shows the sub-verb's usage (its options), not the verb's
    for verb in (["keys", "list"], ["image", "build"]):
        r = cli(*verb, "--nope")
        assert r.returncode == 2 and not r.stdout, (verb, r.stderr)
        assert r.stderr.startswith(f"usage: microstream {' '.join(verb)} [-h]"), (verb, r.stderr)
        assert r.stderr.endswith(f"microstream {' '.join(verb)}: error: unrecognized arguments: --nope\n")
    for verb in (["keys", "create"], ["image", "build"], ["warmup"]):   # described, with examples
        r = cli(*verb, "--help")
        _help_says_what_it_does(verb, r)
        assert " ".join(["microstream", *verb]) in r.stdout.split("\nexamples:\n  ")[1], (verb, r.stdout)
    assert "--timeout S " in cli("warmup", "--help").stdout   # seconds are S, as for every other verb


def test_keys_list_into_a_closed_pipe_ends_quietly_as_the_other_verbs_do(tmp_path):
    # `microstream keys list | head -0`: the reader is gone before anything is written
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "microstream.cli", "keys", "list"], cwd=ROOT, stdout=write,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "MICROSTREAM_HOME": str(tmp_path)})
    finally:
        os.close(write)
    assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr)   # was "[Errno 32] Broken pipe", exit 2
