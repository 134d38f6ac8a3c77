"""The console in a real browser: Debian's Chromium, headless, driven by Playwright (launched on the system's
Chromium: no browser is downloaded), on an embedded cluster of real processes running a job while one of its
virtual nodes migrates. Asserts on the DOM (the DAG, the placement, live rates, the move in the timeline, dead
letters with their reasons) and saves screenshots under out/console/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from microstream.cluster import embedded as cluster
from microstream.cluster.client import Client, ClusterError

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "out" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow  # an embedded cluster and a browser

# keyed windows in parallel, a per-record function that refuses some readings (dead letters with a reason)
JOB = """
import microstream as ms

def checked(r):
    if r["value"] > 48:
        raise ValueError(f"implausible reading {{r['value']:.1f}}")
    return r

p = ms.Pipeline("console-demo")
src = p.synthetic(count=200_000, sensors=20, rate=4000, jitter=0.1, max_delay=0.1, seed=3, speed=1.0,
                  batch_size=400)
ok = src.map_records(checked)
win = ok.key_by("sensor").window(ms.tumbling(seconds=1)).aggregate(
    n=ms.agg.count(), mean=ms.agg.mean("value")).with_parallelism(2)
win.sink(ms.sinks.jsonl("{out}/windows.jsonl"))
p.dead_letters().sink(ms.sinks.jsonl("{out}/dead.jsonl"))
p.run()
"""


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microstream.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def request_move(client: Client, job: str, vnode: str) -> tuple[str, str]:
    """Move `vnode` to the other agent; the re-placement policy may be moving it already: then try again."""
    deadline = time.monotonic() + 60
    while True:
        here = client.status()["jobs"][job]["vnodes"][vnode]["agent"]
        there = "node2" if here == "node1" else "node1"
        try:
            assert client.migrate(job, vnode, there)["to"] == there
            return here, there
        except ClusterError as exc:
            if "already moving" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "home"
    cluster.up(2, root, progress=lambda _: None)
    yield root
    cluster.down(root, progress=lambda _: None)


@pytest.mark.timeout(300)
def test_the_console_shows_a_running_job_and_its_move(home, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB.format(out=tmp_path)))
    r = cli("submit", "--detach", str(script), "--home", str(home))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().splitlines()[-1]
    r = cli("console", "--home", str(home))
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    assert url.startswith("http://127.0.0.1:") and "token=" in url
    SHOTS.mkdir(parents=True, exist_ok=True)

    with Client(cluster.address(home), timeout=60) as client, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300})
            page.goto(url)
            page.wait_for_selector("#connection[data-state=live]", timeout=30_000)
            status = client.status()["jobs"][job]
            operators = [n for n in status["dag"]["nodes"]]
            # the DAG: every operator a box, the dead-letter edges grouped (no edge drawn into the hub)
            page.wait_for_function(f"document.querySelectorAll('#dag svg g.node').length === {len(operators)}",
                                   timeout=60_000)
            hub = next(n["id"] for n in operators if n["kind"] == "side")
            assert page.locator(f'#dag svg path.edge[data-dst="{hub}"]').count() == 0
            assert "(grouped)" in page.locator(f'#dag svg g.node[data-id="{hub}"]').text_content()
            # live rates: more than 0 records/s into the windows while the job runs
            window = next(n["id"] for n in operators if n["name"].startswith("window"))
            page.wait_for_function(
                f"+(document.querySelector('#dag svg g.node[data-id=\"{window}\"]')?.dataset.rate || 0) > 0",
                timeout=90_000)
            assert "/s · wm " in page.locator(f'#dag svg g.node[data-id="{window}"] text.node-detail').text_content()
            # the placement: every virtual node, framed by the agent it runs on
            vnodes = client.status()["jobs"][job]["vnodes"]
            page.wait_for_function(
                f"document.querySelectorAll('#placement svg g.node').length === {len(vnodes)}", timeout=30_000)
            agents = {v["agent"] for v in vnodes.values()}
            for agent in agents:
                assert page.locator(f'#placement svg g.group[data-group="{agent}"]').count() == 1
            # the dead-letter browser: refused readings with their reason
            page.wait_for_selector("#dead-letters tr.dead-letter", timeout=60_000)
            assert "implausible reading" in page.locator("#dead-letters tbody").inner_text()
            page.screenshot(path=str(SHOTS / "running.png"), full_page=True)

            # a requested move: it shows in the timeline (with its downtime) and in the placement
            vnode = next(vn for vn, v in vnodes.items() if any(t.startswith("window") for t in v["tasks"]))
            here, there = request_move(client, job, vnode)
            page.wait_for_selector("#timeline li.move:not(.automatic)", timeout=30_000)
            entry = page.locator("#timeline li.move:not(.automatic)").first.inner_text()
            assert f"{vnode}: {here} → {there}" in entry and "requested" in entry
            assert ("inputs held" in entry and " ms" in entry) or "no records held" in entry
            page.wait_for_function(
                f"document.querySelector('#vnodes tr[data-vnode=\"{vnode}\"] td:nth-child(2)')?.textContent "
                f"=== '{there}'", timeout=30_000)
            page.wait_for_function(f"+(document.querySelector('#dag svg g.node[data-id=\"{window}\"]')"
                                   "?.dataset.rate || 0) > 0", timeout=60_000)  # still flowing after the move
            moves = len(client.status()["jobs"][job]["migrations"])  # the policy may have moved some too
            page.wait_for_function(f"document.querySelectorAll('#timeline-strip svg rect.mark.move').length >= {moves}",
                                   timeout=30_000)
            deadline = time.monotonic() + 30  # the placement redrawn with the virtual node in its new frame
            while time.monotonic() < deadline and f'data-group="{there}"' not in page.inner_html("#placement"):
                page.wait_for_timeout(200)
            assert f'data-group="{there}"' in page.inner_html("#placement")
            page.screenshot(path=str(SHOTS / "after-move.png"), full_page=True)
            page.locator("#dag").screenshot(path=str(SHOTS / "dag.png"))
        finally:
            browser.close()
        client.stop(job)
