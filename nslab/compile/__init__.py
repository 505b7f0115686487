"""Compile: a model Topology -> a Plan (pure, deterministic, golden-file tested).

topology.py builds nodes, links, bridges, addresses and routes; cluster.py adds flannel's
per-backend ops; tunnels.py node tunnels; kernel.py fits a plan to this kernel; script.py
renders a plan as iproute2; kubeproxy.py and masq.py render iptables-restore text."""
from .topology import compile_topology

__all__ = ["compile_topology"]
