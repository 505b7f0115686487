"""Compile: a model Topology -> a Plan (pure, deterministic, golden-file tested).

topology.py builds nodes, links, bridges, addresses and routes; cluster.py adds flannel's
per-backend ops; tunnels.py node tunnels; kernel.py fits a plan to this kernel; script.py
renders a plan as iproute2; kubeproxy.py and masq.py render iptables-restore text.

compile_topology loads on first use (PEP 562): importing compile.script (the applier does,
for its messages) must not load the whole compiler and the model at CLI start-up."""
import importlib

__all__ = ["compile_topology"]


def __getattr__(name: str):
    if name != "compile_topology":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = importlib.import_module(".topology", __name__).compile_topology   # lazy: start-up
    globals()[name] = value
    return value
