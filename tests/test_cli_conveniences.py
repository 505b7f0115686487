"""The command line as a newcomer drives it, without root: errors about command-line values
name the option, bundled topology names, the package face (`from nslab import Lab`,
--version, python -m nslab, completion)."""
from __future__ import annotations

import pytest

from conftest import REPO, nslab


@pytest.mark.parametrize("args, message", [
    (["validate", "topologies/flannel-vxlan.yaml", "--backend", "vxlan:99999"],
     "nslab: --backend vxlan:99999: '99999' is not a UDP port (1 to 65535)\n"),
    (["validate", "topologies/flannel-vxlan.yaml", "--backend", "ipip:99"],
     "nslab: --backend ipip:99: only vxlan and udp take a port (--backend udp:8282)\n"),
    (["validate", "topologies/flannel-vxlan.yaml", "--backend", "geneve"],
     "nslab: --backend geneve: unknown backend 'geneve' (flannel backends: vxlan, host-gw, ipip, udp)\n"),
    (["script", "topologies/diy-veth.yaml", "--backend", "ipip"],
     "nslab: --backend ipip: diy-veth.yaml has no cluster: section, so there is no flannel backend to choose\n"),
])
def test_bad_option_values_blame_the_option(args, message):
    r = nslab(*args)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", message)


def test_bundled_names_validate_anywhere(tmp_path):
    import subprocess, sys
    r = subprocess.run([sys.executable, "-m", "nslab", "validate", "diy-veth", "spine-leaf", "nosuch"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stdout.splitlines() == ["diy-veth: ok (lab diy-veth: 2 nodes, 10 operations)",
                                     "spine-leaf: ok (lab spine-leaf: 13 nodes, 153 operations)"]
    assert r.stderr.startswith("nslab: no topology 'nosuch': no such file, and nslab bundles no topology of that "
                               "name (bundled: containers, diy-bridge, ")


@pytest.mark.parametrize("spec", ["topologies/spine-leaf.yaml", "spine-leaf.yaml", "./spine-leaf"])
def test_a_path_that_does_not_exist_is_an_error_naming_the_bundled_file(tmp_path, spec):
    """Only a bare name means a bundled topology: a missing path (here: relative to an empty
    folder) used to bring up the bundled file of the same name without a word."""
    import subprocess, sys
    r = subprocess.run([sys.executable, "-m", "nslab", "validate", spec], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr == (f"nslab: no topology file {spec!r}: no such file; nslab bundles a topology of that name: "
                        f"give it as spine-leaf\n")


def test_package_face_is_lazy_and_complete(tmp_path):
    import subprocess, sys
    code = ("import sys, nslab; assert 'nslab.api' not in sys.modules and 'nslab.lab' not in sys.modules; "
            "from nslab import Lab; import nslab.api; assert Lab is nslab.api.Lab; print(nslab.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    version = r.stdout.strip()
    assert version.count(".") == 2
    for argv in (["nslab", "--version"], [sys.executable, "-m", "nslab", "--version"]):
        r = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert (r.returncode, r.stdout) == (0, f"nslab {version}\n"), argv
    r = subprocess.run([sys.executable, "-m", "nslab", "--help"], capture_output=True, text=True, timeout=60)
    assert "--install-completion" in r.stdout and "--version" in r.stdout


def test_shell_completion_completes_verbs():
    import os, subprocess
    env = dict(os.environ, _NSLAB_COMPLETE="complete_bash", COMP_WORDS="nslab sh", COMP_CWORD="1")
    r = subprocess.run(["nslab"], capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stdout.split()) == (0, ["shell", "show"])
    r = subprocess.run(["nslab", "--show-completion", "bash"], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if not k.startswith("_NSLAB")}, timeout=60)
    assert "_nslab_completion()" in r.stdout and "complete " in r.stdout
