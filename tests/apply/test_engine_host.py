"""The container engine nslab asks is the machine's own (issue 18's audit, the environment
part of hole 1): nslab wires a container by the PID the engine reports, as root, into that
process's network namespace; an engine chosen by the caller's environment (`sudo -E` keeps
DOCKER_HOST) could name any PID, the host's PID 1 included."""
from __future__ import annotations

import os
import socket

import pytest

from nslab import state
from nslab.apply import containers
from nslab.errors import NslabError, PrerequisiteError


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:2375", "ssh://user@example.invalid", "npipe:////./pipe/x"])
def test_a_remote_engine_is_refused(monkeypatch, host):
    monkeypatch.setenv("DOCKER_HOST", host)
    with pytest.raises(PrerequisiteError) as e:
        containers.engine_socket()
    assert str(e.value) == (f"DOCKER_HOST={host}: nslab wires containers by their PID on this machine, so it talks "
                            f"only to the local engine's unix socket (unset DOCKER_HOST)")


def test_a_socket_another_user_can_replace_is_refused(monkeypatch, tmp_path):
    folder = tmp_path / "userdir"
    folder.mkdir()
    path = folder / "docker.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        assert containers.engine_socket() == str(path)          # ours, in folders only we can write
        os.chmod(folder, 0o777)                                  # anyone could swap the socket now
        with pytest.raises(PrerequisiteError) as e:
            containers.engine_socket()
    assert "can be replaced by another user" in str(e.value)
    monkeypatch.delenv("DOCKER_HOST")
    assert containers.engine_socket() == "/var/run/docker.sock"


@pytest.mark.root
def test_a_container_pid_in_the_host_namespace_is_never_wired():
    """nslab runs in the host's network namespace: its own PID stands for any host process.
    PID 1's namespace is the host's too (or, where even root may not look at PID 1, unseen):
    both refused."""
    for pid, where in ((os.getpid(), "the host network namespace"), (1, None)):
        with pytest.raises(NslabError) as e:
            state.container_namespace(pid, "container node c1")
        said = str(e.value)
        assert said.startswith(f"container node c1: the container engine reported PID {pid}, which lives in "), said
        assert where is None or f"lives in {where}; nslab wires nothing there" in said, said
