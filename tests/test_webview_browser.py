"""``clustermesh local dashboard`` in a real headless Chromium (Debian's, with its driver).

A 3-cluster local mesh, the dashboard started as a user would (a subprocess printing its
URL), and Selenium driving ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` —
never a downloaded browser.  The page must list every cluster with every cell ready;
after ``clustermesh local stop --cluster cluster2 --component etcd --kill`` the cells of
cluster2's row (cluster2 cached in cluster1 and cluster3) must turn not-ready within
30 s and its column show cluster2 itself unreachable.  Chromium's performance log
records every request the page made: each must have gone to loopback.  The screenshot
lands in the test's tmp_path and at ``$CLUSTERMESH_SCREENSHOT`` (default: the pytest
base temp directory, ``webview.png``); README's ``docs/webview.png`` is one.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from harness.procs import Child
from test_localmesh import _out, cm, running_mesh

from clustermesh.etcdbin import EtcdNotFound, find_etcd_binary

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CLUSTERS = ("cluster1", "cluster2", "cluster3")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NETWORK = {"http", "https", "ws", "wss", "ftp"}
INTERNAL = {"chrome", "data", "about", "blob"}

try:
    find_etcd_binary()
except EtcdNotFound as exc:  # pragma: no cover - CI installs etcd
    pytest.skip(str(exc), allow_module_level=True)
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):  # pragma: no cover - CI installs them
    pytest.skip("Debian's chromium and chromium-driver are not installed",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Iterator[Path]:
    with running_mesh(tmp_path / "mesh") as d:
        yield d


def _read_url(child: Child, timeout: float) -> str:
    """The URL the dashboard prints once it listens."""
    assert child.popen.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(child.popen.stdout, selectors.EVENT_READ)
    seen = ""
    while sel.select(timeout):
        line = child.popen.stdout.readline()
        if not line:
            break
        seen += line
        if found := re.search(r"http://127\.0\.0\.1:\d+/", line):
            return found.group(0)
    raise AssertionError(f"the dashboard printed no URL; its output:\n{seen}")


@pytest.fixture
def dashboard(mesh_dir: Path) -> Iterator[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    child = Child.spawn([sys.executable, "-m", "clustermesh_tools.cli", "local", "dashboard",
                         "--dir", str(mesh_dir), "--listen", "127.0.0.1:0",
                         "--refresh", "1s"],
                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        stdin=subprocess.DEVNULL)
    try:
        yield _read_url(child, timeout=30)
    finally:
        child.signal(signal.SIGINT)
        try:
            code = child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)
            code = child.wait(timeout=10)
        assert code == 130, f"dashboard exited {code} on Ctrl-C"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--no-first-run",
                "--window-size=1500,1250", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver: webdriver.Chrome) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


# Read in one script: the page redraws the matrix every refresh, so element references
# held across several WebDriver calls go stale.
_READ = """
const q = s => Array.from(document.querySelectorAll(s));
return {cells: q("#matrix-body td").map(td => [td.dataset.source, td.dataset.cachedIn,
                                                td.dataset.state, td.title]),
        columns: q("#matrix-head th[data-column]").map(th => [th.dataset.column,
                                                              th.dataset.state]),
        rows: q("#matrix-body th").map(th => th.textContent),
        problems: document.getElementById("problems").textContent};
"""


def _page(driver: webdriver.Chrome) -> dict:
    return driver.execute_script(_READ)


def _states(driver: webdriver.Chrome) -> dict[tuple[str, str], str]:
    """(source, cached-in) -> the state each cell of the page shows; the diagonal's
    cells, and each column's header as (\"column\", name)."""
    page = _page(driver)
    states = {(src, into): state for src, into, state, _ in page["cells"]}
    states.update({("column", name): state for name, state in page["columns"]})
    return states


def test_dashboard_follows_a_killed_etcd(mesh_dir: Path, dashboard: str,
                                         browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(dashboard)
    every_cell = {(s, c) for s in CLUSTERS for c in CLUSTERS}
    WebDriverWait(browser, 30).until(
        lambda d: (s := _states(d)).keys() >= every_cell and set(s.values()) == {"ready"})
    page = _page(browser)
    assert [name for name, _ in page["columns"]] == list(CLUSTERS)
    assert page["rows"] == list(CLUSTERS)
    titles = {(src, into): title for src, into, _, title in page["cells"]}
    # Each cell says where its data came from.
    assert "cluster1's KVStoreMesh status API" in titles[("cluster2", "cluster1")]
    assert "/metrics" in titles[("cluster2", "cluster1")]

    r = cm("local", "stop", "--dir", mesh_dir, "--cluster", "cluster2", "--component", "etcd",
           "--kill")
    assert r.returncode == 0, _out(r)

    def cluster2_down(d: webdriver.Chrome) -> bool:
        s = _states(d)
        return (s[("cluster2", "cluster1")] == "not-ready"
                and s[("cluster2", "cluster3")] == "not-ready"
                and s[("cluster2", "cluster2")] == "unreachable"
                and s[("column", "cluster2")] == "unreachable")

    WebDriverWait(browser, 30, poll_frequency=0.5).until(cluster2_down)
    s = _states(browser)
    # The others still cache each other.
    assert s[("cluster1", "cluster3")] == s[("cluster3", "cluster1")] == "ready"
    problems = _page(browser)["problems"]
    assert "cluster2" in problems and "etcd process NOT RUNNING" in problems, problems

    shot = tmp_path / "webview.png"
    assert browser.save_screenshot(str(shot))
    stable = Path(os.environ.get("CLUSTERMESH_SCREENSHOT")
                  or tmp_path.parent.parent / "webview.png")
    stable.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, stable)
    print(f"screenshot: {stable}")

    urls = _requested_urls(browser)
    assert any(u.endswith("/api/v1/mesh") for u in urls), urls
    # chrome:// and data: are the browser's own new tab page, before the dashboard was
    # opened: served from inside the browser, they never reach a network.
    unknown = [u for u in urls if urlparse(u).scheme not in {*NETWORK, *INTERNAL}]
    assert not unknown, f"requests of an unexpected scheme: {unknown}"
    outside = [u for u in urls
               if urlparse(u).scheme in NETWORK and urlparse(u).hostname not in LOOPBACK]
    assert not outside, f"the browser requested something not on loopback: {outside}"
