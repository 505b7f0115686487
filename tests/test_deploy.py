"""deploy/: the agent's systemd unit and Kubernetes DaemonSet start `nslab agent` with
options the command has (issue 20, item 2).  Neither is run here: no systemd or cluster."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from nslab import cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def agent_options() -> set[str]:
    import inspect
    opts = set()
    for p in inspect.signature(cli.agent_cmd.__wrapped__).parameters.values():
        opts |= {d for d in getattr(p.default, "decls", ()) if d.startswith("--")}
    return opts


def test_agent_options_are_known():
    assert {"--etcd", "--machine", "--underlay"} <= agent_options()


def test_systemd_unit_runs_the_agent_and_leaves_shards_on_stop():
    text = (DEPLOY / "nslab-agent.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1).split()
    assert exec_start[1:3] == ["nslab", "agent"]
    assert {w for w in exec_start if w.startswith("--")} <= agent_options()
    assert "Restart=always" in text and "KillMode=process" in text


def test_daemonset_runs_the_agent_privileged_on_the_host_network():
    ds = yaml.safe_load((DEPLOY / "nslab-agent-daemonset.yaml").read_text())
    assert ds["kind"] == "DaemonSet"
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    c = spec["containers"][0]
    assert c["command"][:2] == ["nslab", "agent"]
    assert {w for w in c["command"] if w.startswith("--")} <= agent_options()
    assert c["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional" and "/run/nslab" in mounts
