"""pytest plugin (registered through the pytest11 entry point): real labs for your tests.

    import pytest

    @pytest.mark.nslab("topologies/spine-leaf.yaml")          # up before the test, down after
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
  and the teardown fails if any of its namespaces is left behind.
- `nslab_prefix`: lab names are `<prefix><pid>x<n>` (ini `nslab_prefix` or
  `--nslab-prefix`, default `pt`), unique per process so test runs can share a machine.

A topology is a path (relative to the test file's directory or the rootdir) or the name
of one bundled with nslab (`spine-leaf`).  Labs need root: without it these fixtures skip.
Importing this module stays cheap and side-effect free (nslab is imported on first use).
"""
from __future__ import annotations

import itertools
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
    """A topology path: absolute, relative to one of `bases`, or bundled with nslab by name
    (`spine-leaf`) or as spelled in nslab's repository (`topologies/spine-leaf.yaml`)."""
    from nslab import lab as labmod  # lazy: start-up (the plugin loads with every pytest run)
    found = labmod.find_topology(spec, tuple(bases))
    if Path(found).is_file():
        return found
    looked = list(dict.fromkeys(str((b / spec).parent) for b in bases))     # rootdir is often the test's dir
    pytest.fail(f"nslab: no topology {spec!r} (not in {', '.join(looked) or '.'}, and nslab bundles none of that "
                f"name: {', '.join(labmod.bundled_topologies())})", pytrace=False)


class LabFactory:
    """Brings labs up under unique names and takes every one of them down in close()."""

    def __init__(self, prefix: str, bases: list[Path]):
        self.prefix, self.bases = prefix, bases
        self.labs: list = []
        self.shared: dict[tuple, object] = {}

    def __call__(self, topology: str, backend: str | None = None, name: str | None = None):
        from nslab.api import Lab  # lazy: start-up
        from nslab.errors import NslabError  # lazy: start-up
        if os.geteuid() != 0:
            pytest.skip("nslab labs need root (they create network namespaces)")
        path = find_topology(str(topology), *self.bases)
        name = name or f"{self.prefix}{os.getpid()}x{next(_counter)}"
        try:
            lab = Lab.up(path, name=name, backend=backend)
        except NslabError as e:             # one line, as the CLI prints it
            pytest.fail(f"nslab: {e}", pytrace=False)
        self.labs.append(lab)
        return lab

    def get(self, topology: str, backend: str | None = None):
        """One lab per (topology, backend) for the factory's lifetime."""
        key = (find_topology(str(topology), *self.bases), backend)
        if key not in self.shared:
            self.shared[key] = self(topology, backend=backend)
        return self.shared[key]

    def close(self) -> None:
        from nslab.apply import netns  # lazy: start-up
        problems = []
        for lab in reversed(self.labs):
            try:
                lab.down()
            except Exception as e:          # keep going: every lab must come down
                problems.append(f"nslab down {lab.name}: {e}")
            left = [n for n in netns.list_names() if n.startswith(lab.name + ".")]
            if left:
                problems.append(f"lab {lab.name} left namespaces behind: {', '.join(left)}")
        self.labs.clear()
        self.shared.clear()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


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
