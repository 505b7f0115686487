"""The Vagrantfile: valid (`vagrant validate`), provisioned by install.sh (the script CI
runs), a stock-kernel Debian box, no port forwarded into labs, and the README's "Run it in
a VM" section shows exactly its three commands."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import installed

REPO = Path(__file__).resolve().parent.parent
VAGRANTFILE = (REPO / "Vagrantfile").read_text()
README = (REPO / "README.md").read_text()
THREE = ["vagrant up", "vagrant ssh -c 'sudo nslab up'", "vagrant ssh -c 'cd /vagrant && sudo python3 -m pytest -q tests'"]


def test_vagrant_validate(tmp_path):
    installed("vagrant")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CWD=str(REPO), VAGRANT_CHECKPOINT_DISABLE="1")
    # --ignore-provider: CI has no VirtualBox/libvirt; the provider blocks are checked by `vagrant up`
    proc = subprocess.run(["vagrant", "validate", "--ignore-provider"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    assert not (REPO / ".vagrant").exists()


def test_provisioned_by_the_install_script_ci_runs():
    assert re.search(r'config\.vm\.provision "shell".*inline: "cd /vagrant && \./install\.sh"', VAGRANTFILE, re.S)
    assert "./install.sh" in (REPO / ".ci" / "run").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in VAGRANTFILE      # Debian 12, its stock kernel
    assert 'config.vm.synced_folder ".", "/vagrant"' in VAGRANTFILE
    assert "forwarded_port" not in VAGRANTFILE
    for mem in re.findall(r"\.memory = (\d+)", VAGRANTFILE):
        assert int(mem) >= 2048
    for cpus in re.findall(r"\.cpus = (\d+)", VAGRANTFILE):
        assert int(cpus) >= 2


def test_readme_shows_the_three_commands():
    section = README.split("## Run it in a VM", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:sh|console)?\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == THREE
    for cmd in THREE:
        assert cmd in VAGRANTFILE
    # the test command inside the VM is the README's own test command
    assert "sudo python3 -m pytest -q tests" in README.split("## ", 1)[0]
