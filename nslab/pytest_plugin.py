"""pytest plugin (registered through the pytest11 entry point): real labs for your tests.

    import pytest

    @pytest.mark.nslab("topologies/spine-leaf.yaml")          # a path; up before, down after
    def test_overlay(lab):
        assert lab.ping("client", "web-worker3").ok
        assert lab.test().ok                                   # the file's own tests: section

    def test_two_labs(nslab_lab):                              # a factory, for several labs
        a = nslab_lab("topologies/diy-veth.yaml")
        b = nslab_lab("spine-leaf", backend="host-gw")         # a topology bundled with nslab

Fixtures:
- `lab`: the lab named by the closest `nslab` marker (`@pytest.mark.nslab(TOPOLOGY,
  backend=None, scope="function"|"module")`, also as a module's `pytestmark`) or by the
  `nslab_topology` ini option.  scope="module" shares one lab among the module's tests.
- `nslab_lab` / `nslab_module_lab`: factories `(topology, backend=None, name=None) -> Lab`;
  every lab they bring up is brought down after the test / the module, even on failure,
  and the teardown fails if anything of it is left behind (namespaces, its run directory,
  /etc/netns entries, processes).
- `nslab_prefix`: lab names are `<prefix><pid>x<n>` (ini `nslab_prefix` or
  `--nslab-prefix`, default `pt`), unique per process so test runs can share a machine.
  nslab's own tests use the same factory, names (prefix `t`) and root-skip.

A topology is a path (relative to the test file's directory or the rootdir) or the name
of one bundled with nslab (`spine-leaf`).  Labs need root: without it these fixtures skip.
Importing this module stays cheap and side-effect free (nslab is imported on first use).
"""
from __future__ import annotations

import glob
import itertools
import json
import os
from pathlib import Path

import pytest

MARKER = "nslab"
_counter = itertools.count(1)


def pytest_addoption(parser):
    parser.addini("nslab_topology", "topology for the `lab` fixture when a test has no nslab marker", default="")
    parser.addini("nslab_prefix", "prefix of the lab names the nslab fixtures use", default="pt")
    parser.addoption("--nslab-prefix", default=None, help="prefix of the lab names the nslab fixtures use")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}(topology, backend=None, scope='function'): bring this "
                                       f"topology up for the `lab` fixture (scope='module': one lab per module)")


def find_topology(spec: str, *bases: Path) -> str:
    """A topology path: absolute or relative to one of `bases`; a bare name (`spine-leaf`)
    bundled with nslab; or a generated fabric's shape (`clos:2,4,10`), as `nslab up` takes
    it (lab.find_topology: a path that does not exist is never a bundled file)."""
    from nslab import lab as labmod  # lazy: start-up (the plugin loads with every pytest run)
    found = labmod.find_topology(spec, tuple(bases))
    if Path(found).is_file() or (found == spec and labmod.is_shape(spec)):   # a file, or a fabric's shape
        return found
    looked = list(dict.fromkeys(str((b / spec).parent) for b in bases))     # rootdir is often the test's dir
    stem = Path(spec).stem
    alternative = (f"nslab bundles a topology named {stem}: nslab_lab({stem!r})" if stem in labmod.bundled_topologies()
                   else f"and nslab bundles none of that name: {', '.join(labmod.bundled_topologies())}")
    pytest.fail(f"nslab: no topology {spec!r} (not in {', '.join(looked) or '.'}; {alternative})", pytrace=False)


NEEDS_ROOT = "needs root (real network namespaces); run as root"


def skip_unless_root() -> None:
    """The one root-skip of nslab's fixtures (and of nslab's own test suite)."""
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)


def lab_prefix(prefix: str) -> str:
    """What every lab name of this process starts with: `<prefix><pid>x`."""
    return f"{prefix}{os.getpid()}x"


def lab_name(prefix: str) -> str:
    """A lab name unique on this machine while this process lives: `<prefix><pid>x<n>`."""
    name = f"{lab_prefix(prefix)}{next(_counter)}"
    assert len(name) <= 32, f"lab name {name!r} too long: shorten the prefix {prefix!r}"
    return name


def _alive(pid: int, start_time: int | None) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if fields[0] == "Z":
        return False
    return start_time in (None, 0) or int(fields[19]) == start_time


def recorded_processes(name: str, run_dir: str) -> list[dict]:
    """The processes lab `name`'s record lists (empty if it has none or cannot be read)."""
    try:
        with open(os.path.join(run_dir, name, "state.json")) as f:
            return list(json.load(f).get("processes", []))
    except (OSError, ValueError, AttributeError):
        return []


def leftovers(name: str, run_dir: str, processes: list[dict]) -> list[str]:
    """Everything lab `name` could have left behind: namespaces, its run directory,
    /etc/netns entries, and still-running processes of its record (by PID and start time)."""
    problems = []
    ns_left = [n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
               if n.startswith(name + ".")]
    if ns_left:
        problems.append(f"namespaces left in /run/netns: {ns_left}")
    if os.path.exists(os.path.join(run_dir, name)):
        problems.append(f"{os.path.join(run_dir, name)} left behind")
    hosts_left = glob.glob(f"/etc/netns/{glob.escape(name)}.*")
    if hosts_left:
        problems.append(f"/etc/netns entries left: {hosts_left}")
    for p in processes:
        if _alive(p["pid"], p.get("start_time")):
            problems.append(f"process {p['pid']} ({p.get('what')}) still alive")
    return problems


def _api_up(path: str, name: str, backend: str | None = None):
    from nslab.api import Lab  # lazy: start-up
    from nslab.errors import NslabError  # lazy: start-up
    try:
        return Lab.up(path, name=name, backend=backend)
    except NslabError as e:             # one line, as the CLI prints it
        pytest.fail(f"nslab: {e}", pytrace=False)


def _api_down(name: str, run_dir: str) -> None:
    from nslab import lab as labmod  # lazy: start-up
    labmod.down(name)


def _run_dir() -> str:
    from nslab import state  # lazy: start-up
    return state.RUN_DIR


class LabFactory:
    """Brings labs up under unique names and takes every one of them down in close(),
    failing if anything of theirs is left (see `leftovers`).

    `up(path, name=, backend=, **kw) -> lab` and `down(name, run_dir)` default to the
    Python API in this process; nslab's own tests pass ones that run the `nslab` CLI.
    A lab counts from the moment its name is handed out: one whose `up` failed is checked
    for leftovers too."""

    def __init__(self, prefix: str, bases: list[Path], up=None, down=None):
        self.prefix, self.bases = prefix, bases
        self.up, self.down = up or _api_up, down or _api_down
        self.labs: list = []
        self.made: list[tuple[str, str]] = []          # (name, run dir) of every lab tried
        self.shared: dict[tuple, object] = {}

    def __call__(self, topology: str, backend: str | None = None, name: str | None = None,
                 run_dir: str | None = None, **kw):
        skip_unless_root()
        path = find_topology(str(topology), *self.bases)
        name = name or lab_name(self.prefix)
        self.made.append((name, run_dir or _run_dir()))
        if run_dir:
            kw["run_dir"] = run_dir
        lab = self.up(path, name=name, backend=backend, **kw)
        self.labs.append(lab)
        return lab

    def get(self, topology: str, backend: str | None = None):
        """One lab per (topology, backend) for the factory's lifetime."""
        key = (find_topology(str(topology), *self.bases), backend)
        if key not in self.shared:
            self.shared[key] = self(topology, backend=backend)
        return self.shared[key]

    def close(self) -> None:
        problems = []
        for name, run_dir in reversed(self.made):
            processes = recorded_processes(name, run_dir)
            if os.path.exists(os.path.join(run_dir, name)):     # not taken down by the test itself
                try:
                    self.down(name, run_dir)
                except Exception as e:      # keep going: every lab must come down
                    problems.append(f"nslab down {name} failed: {str(e).strip()}")
            problems += [f"lab {name}: {p}" for p in leftovers(name, run_dir, processes)]
        self.labs.clear()
        self.made.clear()
        self.shared.clear()
        if problems:
            pytest.fail("lab teardown left things behind:\n" + "\n".join(problems), pytrace=False)


def _bases(request) -> list[Path]:
    return [Path(str(request.path)).parent, Path(str(request.config.rootpath))]


@pytest.fixture(scope="session")
def nslab_prefix(request) -> str:
    return request.config.getoption("--nslab-prefix") or request.config.getini("nslab_prefix") or "pt"


@pytest.fixture
def nslab_lab(request, nslab_prefix):
    """Factory: nslab_lab(topology, backend=None, name=None) -> Lab, down after the test."""
    factory = LabFactory(nslab_prefix, _bases(request))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def nslab_module_lab(request, nslab_prefix):
    """Factory like nslab_lab, torn down after the module."""
    factory = LabFactory(nslab_prefix, _bases(request))
    yield factory
    factory.close()


@pytest.fixture
def lab(request):
    """The lab of the closest nslab marker (or the nslab_topology ini option)."""
    marker = request.node.get_closest_marker(MARKER)
    kwargs = dict(marker.kwargs) if marker else {}
    topology = (marker.args[0] if marker and marker.args else kwargs.pop("topology", None)) or \
        request.config.getini("nslab_topology")
    if not topology:
        pytest.fail("nslab: the lab fixture needs @pytest.mark.nslab(TOPOLOGY) or the nslab_topology ini "
                    "option", pytrace=False)
    backend, scope = kwargs.pop("backend", None), kwargs.pop("scope", "function")
    if kwargs or scope not in ("function", "module"):
        pytest.fail(f"nslab marker: unknown arguments {sorted(kwargs) or scope!r} (it takes topology, "
                    f"backend=, scope='function'|'module')", pytrace=False)
    if scope == "module":
        return request.getfixturevalue("nslab_module_lab").get(topology, backend)
    return request.getfixturevalue("nslab_lab")(topology, backend=backend)
