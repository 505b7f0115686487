"""Note 003 §1: a pod's containers share one network namespace and talk over its `lo`.
A pod with `containers:` members: each serving member listens in the pod's namespace, so
another member reaches it on 127.0.0.1:PORT (packets counted on the pod's lo, none on eth0),
the cluster reaches it on the pod's address, and another pod's 127.0.0.1 is its own."""
from __future__ import annotations

TOPOLOGY = """\
name: podlo
segments:
  lan: {subnet: 192.168.56.0/24, mtu: 1500}
cluster:
  network: 10.244.0.0/16
  iface: ens33
  backend: {type: vxlan}
  nodes:
    master: {segment: lan, ip: 192.168.56.133}
    node1: {segment: lan, ip: 192.168.56.134}
  pods:
    client: {node: master}
    web:
      node: node1
      containers:
        - {name: app, serve: http, port: 8080}
        - {name: metrics, serve: http, port: 9090}
        - {name: sidecar}
"""


def packets(lab, node: str, dev: str) -> int:
    out = lab.exec(node, "cat", f"/sys/class/net/{dev}/statistics/rx_packets", check=True).stdout
    return int(out)


def test_pod_containers_reach_each_other_on_loopback(root_unchanged, lab_factory):
    lab = lab_factory(TOPOLOGY)
    lo, eth0 = packets(lab, "web", "lo"), packets(lab, "web", "eth0")
    # from the sidecar's shell (the pod's namespace): the other members on 127.0.0.1
    app = lab.exec("web", "curl", "-s", "-m", "10", "http://127.0.0.1:8080", check=True).stdout.split()
    metrics = lab.exec("web", "curl", "-s", "-m", "10", "http://127.0.0.1:9090", check=True).stdout.split()
    assert app[:2] == ["web/app", "127.0.0.1:8080"] and app[3].startswith("127.0.0.1:"), app
    assert metrics[:2] == ["web/metrics", "127.0.0.1:9090"] and metrics[3].startswith("127.0.0.1:"), metrics
    assert packets(lab, "web", "lo") - lo >= 10           # two TCP exchanges, both ends on lo
    assert packets(lab, "web", "eth0") - eth0 <= 2        # nothing of it on eth0 (an ARP at most)
    # the same listener from another pod: by the pod's address, over the overlay
    seen = lab.exec("client", "curl", "-s", "-m", "10", "http://10.244.1.2:8080", check=True).stdout.split()
    assert seen[:2] == ["web/app", "10.244.1.2:8080"] and seen[3].startswith("10.244.0.2:"), seen
    # client's 127.0.0.1 is its own namespace's lo: nothing listens there
    assert lab.exec("client", "curl", "-s", "-m", "5", "http://127.0.0.1:8080").returncode == 7
