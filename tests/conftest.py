"""Shared test infrastructure.

- `root` marker: tests that need root (real namespaces) skip cleanly otherwise; every
  module under tests/integration/ gets the marker automatically.
- Root-namespace snapshot: taken once before the first root test and compared after the
  session (`_root_namespace_guard`), and per test through the `root_unchanged` fixture.
  Links (names + flags), addresses, every routing table, rules, forwarding sysctls, all of
  net.ipv4.conf.default.*, iptables-save / nft ruleset (counters removed) and our own
  /run/netns entries.  Any difference fails.
- `lab_factory`: the pytest plugin's LabFactory (nslab/pytest_plugin.py, what users get),
  bringing labs up through the real CLI (`nslab up`) under the plugin's names with prefix
  `t` (t<pid>x<n>) and, at teardown, running `nslab down` and failing the test if any
  namespace, state directory, /etc/netns entry or recorded process of that lab is left.
  One naming scheme, one root-skip (the plugin's NEEDS_ROOT), one leftover check.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nslab.pytest_plugin import (NEEDS_ROOT, LabFactory, _alive, lab_name, lab_prefix, leftovers,  # noqa: F401
                                 skip_unless_root)

REPO = Path(__file__).resolve().parent.parent
TOPOLOGIES = REPO / "topologies"
IS_ROOT = os.geteuid() == 0
NSLAB = [sys.executable, "-m", "nslab.cli"]      # the console script's code path, this interpreter
LAB_PREFIX = lab_prefix("t")                     # t<pid>x: the plugin's scheme, prefix t
# Every subprocess timeout in the tests is multiplied by this: in the VM stage (tests/vm/run
# sets NSLAB_VM=1) Python under TCG is 20-40x slower and each `nslab` command takes 7-15 s
# (tests/vm/README.md). Slowness alone must not fail a test; the VM's own timeout bounds all.
TIMEOUT_SCALE = 10 if os.environ.get("NSLAB_VM") else 1


# --- root marker ----------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "root: needs root and creates real namespaces")


def _KERNEL_IPIP() -> bool:
    from nslab.apply.kernel import ipip_module_available
    return ipip_module_available()


def _NETEM() -> bool:
    from nslab.apply.qdisc import netem_available
    return netem_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=NEEDS_ROOT)
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.root)
        if item.get_closest_marker("root") and not IS_ROOT:
            item.add_marker(skip)
        if item.get_closest_marker("kernel_ipip") and not _KERNEL_IPIP():
            item.add_marker(pytest.mark.skip(reason="kernel has no ipip module (tests/vm/run runs these on a "
                                                    "stock kernel under qemu)"))
        if item.get_closest_marker("stock_kernel") and not _NETEM():
            item.add_marker(pytest.mark.skip(reason="kernel has no netem qdisc (tests/vm/run runs these on a "
                                                    "stock kernel under qemu)"))


# --- running nslab and commands --------------------------------------------------------

def nslab(*args, env=None, timeout=60, check=False, input=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(NSLAB + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          timeout=timeout * TIMEOUT_SCALE, input=input, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"nslab {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


# --- what install.sh provides: missing is a failure, never a skip ---------------------------
# Skips are only for what this machine's kernel lacks (the markers above) or root. A command,
# the Docker engine or an image that install.sh installs, starts or builds is there on every
# machine the suite runs on; a skip would turn a broken install into a green run.

# Two hosts routed through r1, h1 with a static route: what the converge tests (diff and
# real labs) edit one piece at a time.
ROUTED_HOSTS = """\
hosts:
  h1:
    routes: [{to: 10.9.0.0/24, via: 10.1.0.1}]
  h2: {}
routers: [r1]
links:
  - [{node: h1, ip: 10.1.0.2/24}, {node: r1, ip: 10.1.0.1/24}]
  - [{node: r1, ip: 10.2.0.1/24}, {node: h2, ip: 10.2.0.2/24}]
"""


def installed(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: ./install.sh installs it", pytrace=False)


def container_engine_ready(topology: str = "containers.yaml") -> None:
    """Fail unless the engine answers and the topology's images are built (only what the
    topology's container nodes need: none, nothing to check)."""
    from nslab import model
    from nslab.apply import containers
    from nslab.compile import compile_topology
    reason = containers.unavailable(compile_topology(model.load(str(TOPOLOGIES / topology))))
    if reason:
        pytest.fail(f"{topology}: {reason} (./install.sh starts the engine and builds nslab's images)", pytrace=False)


@pytest.fixture
def container_engine():
    container_engine_ready()


# --- root namespace snapshot -------------------------------------------------------------

def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"<{argv[0]} not installed>"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30 * TIMEOUT_SCALE)
    return proc.stdout + (f"<exit {proc.returncode}: {proc.stderr.strip()}>" if proc.returncode else "")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"<{e.strerror}>"


def _links() -> list[str]:
    out = []
    for line in _run(["ip", "-o", "link"]).splitlines():
        m = re.match(r"\d+: ([^:]+): <([^>]*)>", line)
        if m:
            out.append(f"{m.group(1)} <{m.group(2)}>")
    return sorted(out)


def _addrs() -> list[str]:
    text = _run(["ip", "-o", "addr"])
    text = re.sub(r"(valid_lft|preferred_lft) \S+", "", text)
    return sorted(" ".join(line.replace("\\", " ").split()) for line in text.splitlines())


def _iptables() -> str:
    text = _run(["iptables-save"])
    lines = [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines)


def _nft() -> str:
    text = _run(["nft", "list", "ruleset"])
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


def root_snapshot(own_prefix: str = LAB_PREFIX) -> dict:
    """What the root network namespace looks like.  Read-only.  /run/netns is compared
    only for our own labs' names: other people's labs may come and go meanwhile."""
    conf_default = {os.path.basename(p): _read(p) for p in sorted(glob.glob("/proc/sys/net/ipv4/conf/default/*"))}
    return {
        "links": _links(),
        "addrs": _addrs(),
        "routes": sorted(_run(["ip", "route", "show", "table", "all"]).splitlines()),
        "rules": _run(["ip", "rule"]).splitlines(),
        "ip_forward": _read("/proc/sys/net/ipv4/ip_forward"),
        "conf.all.forwarding": _read("/proc/sys/net/ipv4/conf/all/forwarding"),
        "conf.default": conf_default,
        "iptables": _iptables(),
        "nft": _nft(),
        "netns": sorted(n for n in os.listdir("/run/netns") if n.startswith(own_prefix))
        if os.path.isdir("/run/netns") else [],
    }


def snapshot_diff(before: dict, after: dict) -> list[str]:
    diffs = []
    for key in before:
        a, b = before[key], after.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            gone = [x for x in a if x not in b]
            new = [x for x in b if x not in a]
            diffs.append(f"{key}: removed {_cap(gone)} added {_cap(new)}")
        elif isinstance(a, dict) and isinstance(b, dict):
            changed = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
            diffs.append(f"{key}: changed {changed}")
        else:
            diffs.append(f"{key}: before\n{a}\nafter\n{b}")
    return diffs


def _cap(items: list, limit: int = 8) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


_session_snapshot: dict | None = None


@pytest.fixture(autouse=True)
def _root_namespace_guard(request):
    """Take the session snapshot before the first root test runs (compared at session end)."""
    global _session_snapshot
    if IS_ROOT and _session_snapshot is None and request.node.get_closest_marker("root"):
        _session_snapshot = root_snapshot()
    yield


def pytest_sessionfinish(session, exitstatus):
    if _session_snapshot is None:
        return
    diffs = snapshot_diff(_session_snapshot, root_snapshot())
    if diffs:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = ("ROOT NETWORK NAMESPACE CHANGED during the test session (by these tests or by another "
               "process running meanwhile):\n" + "\n".join(diffs))
        if reporter:
            reporter.write_line(msg, red=True)
        else:
            print(msg, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def root_unchanged():
    """Per-test version: fails the test if the root namespace differs after it."""
    before = root_snapshot()
    yield before
    diffs = snapshot_diff(before, root_snapshot())
    if diffs:
        pytest.fail("root network namespace changed:\n" + "\n".join(diffs), pytrace=False)


# --- labs ----------------------------------------------------------------------------------

def unique_lab_name() -> str:
    return lab_name("t")


@dataclass
class Lab:
    name: str
    file: str
    run_dir: str
    env: dict = field(default_factory=dict)
    down_done: bool = False

    @property
    def state(self) -> dict:
        with open(os.path.join(self.run_dir, self.name, "state.json")) as f:
            return json.load(f)

    def ns(self, node: str) -> str:
        return self.state["nodes"][node]

    def nslab(self, *args, **kw) -> subprocess.CompletedProcess:
        return nslab(*args, env={**self.env, **kw.pop("env", {})}, **kw)

    def exec(self, node: str, *cmd, timeout=30, check=False) -> subprocess.CompletedProcess:
        """`nslab exec -l LAB NODE -- CMD`."""
        return self.nslab("exec", "-l", self.name, node, "--", *cmd, timeout=timeout, check=check)

    def popen(self, node: str, *cmd, **kw) -> subprocess.Popen:
        """A command inside NODE started directly with `ip netns exec` (for long-running tools)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(node), *map(str, cmd)], **kw)

    def down(self) -> subprocess.CompletedProcess:
        proc = self.nslab("down", self.name, check=True)
        self.down_done = True
        return proc


def _cli_up(path: str, name: str, backend: str | None = None, run_dir: str | None = None) -> Lab:
    env = {"NSLAB_RUN_DIR": run_dir} if run_dir else {}
    lab = Lab(name=name, file=str(path), run_dir=run_dir or "/run/nslab", env=env)
    nslab("up", "-q", path, "--name", name, *(["--backend", backend] if backend else []), env=env, check=True)
    return lab


def _cli_down(name: str, run_dir: str) -> None:
    proc = nslab("down", name, env={"NSLAB_RUN_DIR": run_dir})
    if proc.returncode != 0:
        raise AssertionError(proc.stderr.strip())


@pytest.fixture(scope="session")
def nslab_prefix() -> str:
    """The plugin's lab fixtures (nslab_lab, nslab_module_lab, lab) name labs as lab_factory
    does: t<pid>x<n>, which root_snapshot follows in /run/netns."""
    return "t"


@pytest.fixture
def lab_factory(request):
    """lab_factory(topology, run_dir=None, name=None) -> Lab.  `topology` is a path (relative
    paths are looked up in topologies/, then the repository) or YAML text.  run_dir isolates
    the state directory (NSLAB_RUN_DIR) so that e.g. `down --all` sees only this test's labs.
    The plugin's LabFactory with the CLI as up/down: its names, root-skip and leftover check."""
    skip_unless_root()
    tmp = request.getfixturevalue("tmp_path")
    factory = LabFactory("t", [TOPOLOGIES, REPO], up=_cli_up, down=_cli_down)

    def make(topology: str | Path, run_dir: str | None = None, name: str | None = None) -> Lab:
        text = str(topology)
        if "\n" in text:
            path = tmp / f"topo{len(factory.made)}.yaml"
            path.write_text(text)
            text = str(path)
        return factory(text, name=name, run_dir=run_dir)

    yield make
    factory.close()


# --- etcd (issue 20: coordination) ------------------------------------------------------

@dataclass
class EtcdServer:
    endpoint: str
    pid: int
    data_dir: Path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    """A private etcd (Debian's etcd-server, which install.sh installs and leaves stopped) on
    127.0.0.1 with random ports and a temporary data directory, started through spawn and
    killed by its PID at the end of the module."""
    import signal
    import time
    from nslab import coord, spawn
    installed("etcd")
    for _ in range(3):              # a port taken between free_port() and etcd's bind: again
        client, peer = free_port(), free_port()
        data = tmp_path_factory.mktemp("etcd")
        endpoint = f"http://127.0.0.1:{client}"
        with open(data / "etcd.log", "wb") as log:
            proc = subprocess.Popen(
                [spawn.need("etcd"), "--name", "t", "--data-dir", str(data / "member"),
                 "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
                cwd=spawn.CWD, env=spawn.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30 * TIMEOUT_SCALE
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                coord.Etcd(endpoint, timeout=1).get("/")
                break
            except coord.EtcdError:
                time.sleep(0.1)
        else:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            continue
        try:
            yield EtcdServer(endpoint, proc.pid, data)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        return
    pytest.fail(f"etcd did not start: {(data / 'etcd.log').read_text(errors='replace')[-2000:]}", pytrace=False)
