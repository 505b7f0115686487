"""What flanneld writes into each node's kernel, in flannel's own order.

The operations for one node are its backend's (nslab/backends/<type>.py, found through the
registry); this pass adds them per node, in lease order, and notes what flanneld would write
to /run/flannel/subnet.env.
"""
from __future__ import annotations

from .. import backends
from .. import plan as P
from ..model.cluster import Cluster
from .dns import compile_dns
from .services import compile_services


def compile_cluster(topo, plan: P.Plan) -> None:
    cluster: Cluster = topo.cluster
    backend = backends.get(cluster.backend.type)
    for node in cluster.nodes.values():
        for op in backend.ops(cluster, node, lambda name: topo.nodes[name].ns):
            plan.add(op)
        plan.notes[node.name] = {
            "subnet.env": cluster.subnet_env(node),
            "backend": cluster.backend.type,
            "device": cluster.backend.device,
        }
    compile_services(topo, plan)      # flannel's ip-masq and kube-proxy's rules, per node
    compile_dns(topo, plan)           # the coredns pod's server, the pods' resolv.conf
