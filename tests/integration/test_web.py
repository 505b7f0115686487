"""`nslab web` in a real browser (issue 22): headless Chromium (Debian's `chromium`) driven by
Selenium through Debian's `chromium-driver`, against `nslab web` serving a real spine-leaf
lab.  The page shows every node; during a ping flood client -> web-worker3 the counters of
worker1's underlay link move and show vxlan while idle links stay still; a trace drawn on
the page equals `nslab trace --json`; a capture streams decoded rows and its pcap
downloads; a read-only server refuses changes; a foreign Host or Origin is refused; Ctrl-C
leaves nothing running.  A failing test saves a screenshot (tests/integration/web-shots/,
or $NSLAB_WEB_SHOTS); the flood test takes the README's picture, and writes it to
docs/web.png when NSLAB_UPDATE_SCREENSHOT=1 (as NSLAB_UPDATE_GOLDEN does for goldens, so
a test run leaves the tree as it was).
"""
from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import conftest
from conftest import NSLAB, REPO, TOPOLOGIES, LabFactory, _cli_down, _cli_up, nslab

pytestmark = pytest.mark.root
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SHOTS = Path(os.environ.get("NSLAB_WEB_SHOTS", REPO / "tests" / "integration" / "web-shots"))
BASE = int(os.environ.get("NSLAB_WEB_TEST_PORT", "18090"))     # four ports from BASE
PORT, PORT_CHANGES, PORT_GONE, PORT_SERVICES = BASE, BASE + 1, BASE + 2, BASE + 3


def _wait(what: str, cond, timeout: float = 30, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Server:
    """`nslab web -l LAB --port PORT [ARGS]` in the background, returned once it listens."""

    def __init__(self, lab, port: int, *args):
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen(NSLAB + ["web", "-l", lab.name, "--port", str(port), *args], cwd=REPO,
                                     text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **lab.env})
        self.out = ""
        deadline = time.monotonic() + 60
        while "nslab web: http" not in self.out:
            assert time.monotonic() < deadline and self.proc.poll() is None, f"nslab web did not start: {self.out}"
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                self.out += self.proc.stdout.readline()

    def stop(self) -> int:
        """Ctrl-C, as a person stops it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("nslab web did not stop on Ctrl-C")
        self.out += self.proc.stdout.read()
        return rc


@pytest.fixture(scope="module")
def lab():
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromedriver are needed (install.sh installs chromium chromium-driver)")
    if conftest._session_snapshot is None:    # the session's root snapshot before this module's lab
        conftest._session_snapshot = conftest.root_snapshot()
    factory = LabFactory("t", [TOPOLOGIES, REPO], up=_cli_up, down=_cli_down)
    yield factory(str(TOPOLOGIES / "spine-leaf.yaml"))
    factory.close()


@pytest.fixture(scope="module")
def server(lab):
    s = Server(lab, PORT)
    yield s
    assert s.stop() == 0, s.out
    assert "nslab web: stopped" in s.out


@pytest.fixture(scope="module")
def browser():
    from nslab.web.browser import chromium
    driver = chromium()
    yield driver
    driver.quit()


def screenshots(test):
    """Save the browser's screenshot when the test fails."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except BaseException:
            driver = kwargs.get("browser")
            if driver is not None:
                SHOTS.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(SHOTS / f"{test.__name__}.png"))
            raise
    return wrapper


def open_page(browser, server, lab):
    browser.get(server.url + "#" + lab.name)
    _wait("the picture", lambda: browser.execute_script("return document.body.dataset.lab") == lab.name, 60)
    browser.execute_script("window.scrollTo(0, 0)")


def js(browser, script: str):
    return browser.execute_script(script)


def _edge(browser, node, iface):
    """The drawn edge of the link at node:iface, with the counters the page painted on it
    (its id from nslab's own drawing of the lab)."""
    from nslab.web import view
    topo, d = view.drawing(browser._nslab_lab)
    for l in view.links(topo, d):
        if [node, iface] in (l["a"], l["b"]):
            return js(browser, f"const g = document.getElementById('e/{l['edge']}'); "
                               "return g ? Object.assign({id: g.id}, g.dataset) : null;")
    raise AssertionError(f"no link at {node}:{iface}")


@screenshots
def test_page_shows_every_node(lab, server, browser):
    browser._nslab_lab = lab.name
    open_page(browser, server, lab)
    drawn = set(js(browser, "return [...document.querySelectorAll('#graph g.node')].map(g => g.id.slice(2))"))
    rows = json.loads(nslab("show", "-l", lab.name, "--brief", "--json", env=lab.env, check=True).stdout)
    nodes = {r["node"] for r in rows}
    assert nodes and nodes <= drawn, f"not drawn: {nodes - drawn}"
    assert js(browser, "return document.getElementById('lab').value") == lab.name


@screenshots
def test_flood_moves_worker1_underlay_as_vxlan_idle_links_still(lab, server, browser, tmp_path):
    browser._nslab_lab = lab.name
    open_page(browser, server, lab)
    flood = subprocess.Popen(NSLAB + ["exec", "-l", lab.name, "client", "--", "ping", "-q", "-i", "0.002", "-w", "20",
                                      "web-worker3"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, **lab.env})
    try:
        def busy():
            e = _edge(browser, "worker1", "enp0s3")
            return e if e and float(e.get("pps", 0)) > 20 and float(e.get("encapPps", 0)) > 20 else None
        under = _wait("worker1's underlay to count vxlan", busy, 40)
        idle = _edge(browser, "worker2", "enp0s3")          # same rack, not on the path
        master = _edge(browser, "master1", "enp0s3")
        assert float(idle["pps"]) < 5 and float(master["pps"]) < 5, (idle, master)    # an ARP now and then
        text = js(browser, f"return document.getElementById('{under['id']}').querySelector('text.rate').textContent")
        assert "vxlan" in text and "pkt/s" in text, text
        shot = tmp_path / "web.png"
        assert browser.save_screenshot(str(shot)), "the browser took no screenshot"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        if os.environ.get("NSLAB_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, REPO / "docs" / "web.png")
    finally:
        flood.kill()
        flood.wait()


@screenshots
def test_click_node_shows_what_show_says(lab, server, browser):
    browser._nslab_lab = lab.name
    open_page(browser, server, lab)
    js(browser, "document.getElementById('n/worker1').dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    _wait("worker1's tables", lambda: js(browser, "return document.getElementById('node').dataset.node") == "worker1")
    routes = js(browser, "return document.querySelector('#node pre.show-routes').textContent")
    show = json.loads(nslab("show", "-l", lab.name, "worker1", "--json", env=lab.env, check=True).stdout)
    for r in show["nodes"]["worker1"]["routes"]:
        assert r["text"] in routes


@screenshots
def test_drawn_trace_equals_trace_json(lab, server, browser):
    browser._nslab_lab = lab.name
    open_page(browser, server, lab)
    js(browser, "document.getElementById('src').value = 'client'; document.getElementById('dst').value = 'web-worker3';"
                "document.getElementById('trace-go').click()")
    _wait("the trace's steps", lambda: js(browser, "return document.getElementById('steps').dataset.count"), 60)
    drawn = js(browser, "return [...document.querySelectorAll('#steps li')].map(li => "
                        "[li.dataset.leg, li.dataset.node, li.dataset.iface, li.dataset.dir])")
    result = json.loads(nslab("trace", "-l", lab.name, "client", "web-worker3", "--json", env=lab.env,
                              check=True).stdout)
    want = [[leg, h["node"], h["iface"], h["dir"]] for leg in ("request", "reply") for h in result[leg]["hops"]]
    assert drawn == want
    labels = js(browser, "return [...document.querySelectorAll('#steps li .label')].map(s => s.textContent)")
    assert any(l.startswith("encap") for l in labels) and "decap" in labels, labels
    on_picture = js(browser, "return document.querySelectorAll('#graph g.edge.trace').length")
    assert on_picture >= 5
    marks = js(browser, "return [...document.querySelectorAll('#graph text.trace-label')].map(t => t.textContent)")
    assert "encap enp0s3" in marks and "decap enp0s3" in marks, marks       # worker1's, worker3's
    js(browser, "document.getElementById('next').click(); document.getElementById('next').click()")
    assert js(browser, "return [...document.querySelectorAll('#steps li')].findIndex(li => "
                       "li.classList.contains('current'))") == 2


@screenshots
def test_capture_streams_rows_and_pcap(lab, server, browser):
    browser._nslab_lab = lab.name
    open_page(browser, server, lab)
    js(browser, "document.querySelector('nav button[data-tab=capture]').click();"
                "document.getElementById('cap-node').value = 'worker1'; document.getElementById('cap-start').click()")
    _wait("the capture to start", lambda: "capturing on worker1:enp0s3" in js(
        browser, "return document.getElementById('cap-status').textContent"), 30)
    ping = nslab("exec", "-l", lab.name, "client", "--", "ping", "-c", "3", "-i", "0.2", "web-worker3", env=lab.env)
    assert ping.returncode == 0, ping.stderr
    _wait("decoded rows", lambda: int(js(browser, "return document.querySelector('#cap-rows tbody')"
                                                  ".dataset.count || 0") or 0) >= 3, 30)
    kinds = js(browser, "return [...document.querySelectorAll('#cap-rows tr.cap-row td:nth-child(3)')]"
                        ".map(td => td.textContent)")
    assert any("vxlan" in k.lower() for k in kinds), kinds
    magic = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('cap-pcap').href).then(r => r.arrayBuffer())"
        ".then(b => done([...new Uint8Array(b.slice(0, 4))]))")
    assert bytes(magic) in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    js(browser, "document.getElementById('cap-stop').click()")
    _wait("the capture to end", lambda: "ended" in js(browser, "return document.getElementById('cap-status')"
                                                                ".textContent"), 30)


@screenshots
def test_read_only_server_refuses_changes(lab, server, browser):
    browser._nslab_lab = lab.name
    open_page(browser, server, lab)
    assert js(browser, "return document.getElementById('mode').textContent") == "read-only"
    status = browser.execute_async_script(
        "const done = arguments[0]; fetch('/api/lab/' + document.body.dataset.lab + '/link', {method: 'POST', "
        "headers: {'Content-Type': 'application/json'}, body: JSON.stringify({target: 'worker1:enp0s3', "
        "action: 'down'})}).then(r => done(r.status))")
    assert status == 403
    show = json.loads(nslab("show", "-l", lab.name, "worker1", "--json", env=lab.env, check=True).stdout)
    enp = next(i for i in show["nodes"]["worker1"]["interfaces"] if i["name"] == "enp0s3")
    assert "UP" in enp["flags"]


def _get(url: str, headers: dict, method: str = "GET") -> int:
    req = urllib.request.Request(url, headers=headers, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_foreign_host_and_origin_refused(lab, server):
    api = server.url + "api/labs"
    assert _get(api, {}) == 200
    assert _get(api, {"Host": "rebind.example:%d" % PORT}) == 403
    assert _get(api, {"Origin": "http://rebind.example"}) == 403
    post = server.url + f"api/lab/{lab.name}/link"
    assert _get(post, {"Content-Type": "application/json"}, "POST") == 403          # no Origin: refused
    assert _get(post, {"Origin": "http://evil.example", "Content-Type": "application/json"}, "POST") == 403


@screenshots
def test_changes_when_allowed_down_marked_then_ctrl_c_leaves_nothing(lab, browser):
    browser._nslab_lab = lab.name
    s = Server(lab, PORT_CHANGES, "--allow-changes")
    try:
        open_page(browser, s, lab)
        assert js(browser, "return document.getElementById('mode').textContent") == "changes allowed"
        for action in ("down", "up"):
            js(browser, "document.querySelector('nav button[data-tab=link]').click();"
                        "document.getElementById('link-target').value = 'worker2:enp0s3';"
                        "document.getElementById('link-status').textContent = '';"
                        f"document.querySelector('.link-op[data-op={action}]').click()")
            _wait(f"link {action}", lambda: js(browser, "return document.getElementById('link-status')"
                                                        ".textContent").startswith(f"worker2:enp0s3: {action}"), 30)
            show = json.loads(nslab("show", "-l", lab.name, "worker2", "--json", env=lab.env, check=True).stdout)
            enp = next(i for i in show["nodes"]["worker2"]["interfaces"] if i["name"] == "enp0s3")
            assert ("UP" in enp["flags"]) == (action == "up")
            marked = "true" if action == "down" else "false"
            _wait(f"the link marked {action}", lambda: (_edge(browser, "worker2", "enp0s3") or {}).get("down")
                  == marked, 30)
        js(browser, "document.querySelector('nav button[data-tab=capture]').click();"     # left running
                    "document.getElementById('cap-node').value = 'worker3';"
                    "document.getElementById('cap-start').click()")
        _wait("the capture to start", lambda: "capturing on" in js(
            browser, "return document.getElementById('cap-status').textContent"), 30)
        tcpdumps = [p for p in lab.state["processes"] if "(nslab web)" in p["what"]]
        assert len(tcpdumps) == 1, lab.state["processes"]
    finally:
        rc = s.stop()
    assert rc == 0, s.out
    assert subprocess.run(["ss", "-Htln", f"sport = :{PORT_CHANGES}"], capture_output=True,
                          text=True).stdout.strip() == ""
    assert not os.path.exists(f"/proc/{tcpdumps[0]['pid']}"), "Ctrl-C left the page's tcpdump running"
    assert not [p for p in lab.state["processes"] if "(nslab web)" in p["what"]]


@screenshots
def test_lab_taken_down_page_says_so_and_server_lets_go(lab_factory, browser):
    other = lab_factory("diy-veth.yaml")
    browser._nslab_lab = other.name
    s = Server(other, PORT_GONE)
    try:
        open_page(browser, s, other)
        _wait("counters", lambda: js(browser, "return document.getElementById('status').dataset.took"), 30)
        assert nslab("down", other.name, env=other.env).returncode == 0
        _wait("the page to say the lab is gone", lambda: js(browser, "return document.body.dataset.gone")
              == other.name, 30)
        assert "no longer runs" in js(browser, "return document.getElementById('status').textContent")
    finally:
        assert s.stop() == 0, s.out


def _sep_packets(lines: list[str], service: str) -> int:
    """The packets kube-proxy's KUBE-SEP DNAT rules of `service` counted, from show's lines."""
    import re
    rx = re.compile(r"\[(\d+):\d+\] -t nat -A KUBE-SEP-\S+ .*" + re.escape(service) + r".* -j DNAT")
    return sum(int(m.group(1)) for m in map(rx.match, lines) if m)


@screenshots
def test_service_traffic_moves_netfilter_counters_in_show_and_page(lab_factory, browser):
    """Three connections to the Service from client (on master1): master1's KUBE-SEP DNAT
    counters grow by three in `nslab show --json`, and the node panel prints what show prints."""
    from nslab.observe.show import netfilter_lines
    svc = lab_factory("spine-leaf-services.yaml")
    browser._nslab_lab = svc.name

    def shown() -> list[str]:
        out = json.loads(nslab("show", "-l", svc.name, "master1", "--json", env=svc.env, check=True).stdout)
        return netfilter_lines(out["nodes"]["master1"]["netfilter"], every=True)
    before = _sep_packets(shown(), "default/testappds")
    for _ in range(3):
        r = nslab("exec", "-l", svc.name, "client", "--", "curl", "-s", "-m", "10", "10.111.222.68:8080", env=svc.env)
        assert r.returncode == 0 and "answered" in r.stdout, r.stdout + r.stderr
    after = _sep_packets(shown(), "default/testappds")
    assert after == before + 3, (before, after)
    text = nslab("show", "-l", svc.name, "master1", env=svc.env, check=True).stdout
    assert "-j KUBE-SEP-" in text and "counted no packet" in text, text
    s = Server(svc, PORT_SERVICES)
    try:
        open_page(browser, s, svc)
        js(browser, "document.getElementById('n/master1').dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        _wait("master1's tables", lambda: js(browser, "return document.getElementById('node').dataset.node")
              == "master1")
        page = js(browser, "return document.querySelector('#node pre.show-netfilter').textContent").splitlines()
        assert _sep_packets(page, "default/testappds") == after, page
        assert [line for line in page if "KUBE-SVC-" in line and "testappds" in line], page
    finally:
        assert s.stop() == 0, s.out
