"""The `tests:` section: checks a topology declares about itself, and running them.

    tests:
      - {name: across racks, ping: [client, web-worker3], expect: {encap: vxlan, ttl: 62, via: spine}}
      - {ping: [client, web@worker2], expect: {encap: none}}        # web@worker2 = daemonset pod web-worker2
      - {ping: [client, web-worker3], expect: {mtu: 9100}}          # 9072-byte payload passes with DF, 9073 not
      - {http: [client, web-worker3]}                                # port 80, expect success
      - {tcp: [client, web-worker3], port: 81, expect: failure}

A probe goes from a node (host, router or pod) to a node or an IPv4 address.  `expect` is
`success` (the default), `failure`, or a mapping of what the arriving probe must show:
- encap: vxlan | ipip | udp | none - how the probe leaves: from a pod or a cluster node,
  as seen on that cluster node's underlay interface (VXLAN decoded on the lab's configured
  port); from any other node, the most encapsulated frame leaving it (a DIY tunnel);
- ttl: the probe's IP TTL as it arrives at the destination (read in its namespace);
- via: a node whose namespace sees the probe (encapsulated or not);
- mtu: the path MTU: a ping payload of mtu - 28 bytes with DF set gets an answer, one
  byte more does not.
A test may say which flannel backend it was written for: `backend: vxlan` (or a list).
Under another backend (`nslab up --backend udp`) it is skipped, with that reason, rather
than failed; `expect: {encap: vxlan}` implies `backend: vxlan`.  Expectations are never
rewritten for another backend: TTLs, MTUs and direct routing differ between backends.
Every probe carries a random marker, so it is recognised in any frame, at any depth of
encapsulation.  Probes and sniffers are sockets opened inside the lab's namespaces by this
process (nslab/probe.py): nothing is forked per check.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from .. import backends
from .types import name_list

KINDS = ("ping", "tcp", "http")
TEST_KEYS = {"name", "port", "expect", "timeout", "backend", *KINDS}
EXPECT_KEYS = {"result", "encap", "ttl", "via", "mtu", "source", "endpoint"}
SVC = "svc/"                  # a destination svc/NAME[:PORT]: the cluster IP and port of service NAME


def service_ref(value: str) -> tuple[str, str | None]:
    """svc/NAME -> (NAME, None); svc/NAME:PORT -> (NAME, PORT), PORT a port's name or number."""
    name, colon, port = value[len(SVC):].partition(":")
    return name, (port if colon else None)
RESULTS = ("success", "failure")


def encaps() -> tuple[str, ...]:
    """How a probe may leave: a backend that encapsulates (its module's `wire`), or not at all."""
    return tuple(b.name for b in backends.all() if b.wire is not None) + ("none",)
IP_MTU_OVERHEAD = 28          # IPv4 header 20 + ICMP header 8: ping -s N sends N + 28 bytes


@dataclass
class Check:
    name: str
    kind: str                     # ping | tcp | http
    src: str                      # node name
    dst: str                      # node name or IPv4 address, as written (daemonset alias resolved)
    port: int | None = None
    expect_ok: bool = True
    encap: str | None = None
    ttl: int | None = None
    via: str | None = None
    mtu: int | None = None
    timeout: float = 1.0
    path: tuple = ()
    line: int | None = None
    dst_ip: str = ""              # filled in once addresses are resolved
    dst_node: str | None = None   # the lab node holding dst_ip, if any
    source: str | None = None     # http: the peer address the answering server saw (after any NAT)
    endpoint: str | None = None   # http: the pod that answered (which endpoint a service chose)
    backends: tuple = ()          # `backend:`: the flannel backends this test was written for

    @property
    def assumes(self) -> tuple:
        """The backends this test holds under (empty: any): `backend:`, else the encap it expects."""
        if self.backends:
            return self.backends
        return (self.encap,) if self.encap in backends.names() else ()

    @property
    def probe_text(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.kind} {self.src} -> {self.dst}{port}"

    @property
    def expect_text(self) -> str:
        parts = ["success" if self.expect_ok else "failure"]
        parts += [f"{k} {v}" for k, v in (("encap", self.encap), ("ttl", self.ttl), ("via", self.via),
                                          ("mtu", self.mtu), ("source", self.source),
                                          ("endpoint", self.endpoint)) if v is not None]
        return ", ".join(parts)


def parse(p, b, spec, path) -> list[Check]:
    """Validate the tests: section against the nodes builder b has collected so far; checks
    that need addresses run later, as a builder extension."""
    if spec is None:
        return []
    if not isinstance(spec, list):
        raise p.err(path, "tests must be a list of checks like {ping: [a, b], expect: success}")
    checks: list[Check] = []
    names: dict[str, int] = {}
    for i, item in enumerate(spec):
        c = _check(p, b, item, path + (i,))
        if c.name in names:
            raise p.err(path + (i, "name") if "name" in item else path + (i,),
                        f"test name {c.name!r} is already used by tests[{names[c.name]}]; give each test its own name")
        names[c.name] = i
        checks.append(c)
    b.extensions.append(lambda builder: _resolve_addresses(builder, checks))
    return checks


def _check(p, b, item, path) -> Check:
    item = p.mapping(item, path, TEST_KEYS, what="test")
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        raise p.err(path, "a test needs exactly one probe: ping: [SRC, DST], tcp: [SRC, DST] or http: [SRC, DST]"
                          + (f" (this one has {' and '.join(kinds)})" if kinds else ""))
    kind = kinds[0]
    ends = item[kind]
    if not isinstance(ends, list) or len(ends) != 2:
        raise p.err(path + (kind,), f"{kind} takes [SOURCE, DESTINATION], like {kind}: [client, web], got {ends!r}")
    src = _node(p, b, ends[0], path + (kind, 0))
    if b.nodes[src].kind == "switch":
        raise p.err(path + (kind, 0), f"{src} is a segment (a bridge with no address); probes start at a host, "
                                      f"router or pod")
    dst = _destination(p, b, ends[1], path + (kind, 1))
    if dst == src:
        raise p.err(path + (kind, 1), f"source and destination are both {src}")
    if dst.startswith(SVC) and kind == "ping":
        raise p.err(path + (kind, 1), "a service's cluster IP answers TCP or UDP on its port, not ping "
                                      "(kube-proxy only rewrites the service's port); use http or tcp")
    c = Check(name="", kind=kind, src=src, dst=dst, path=path, line=p.doc.line(path))

    if "port" in item:
        if dst.startswith(SVC) and service_ref(dst)[1] is not None:
            raise p.err(path + ("port",), f"{dst} names the port already; drop port: (or write {dst.split(':')[0]})")
        if kind == "ping":
            raise p.err(path + ("port",), "port applies to tcp and http tests, not ping")
        port = item["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise p.err(path + ("port",), f"port {port!r} is not a TCP port (1 to 65535)")
        c.port = port
    elif dst.startswith(SVC):           # the port svc/NAME:PORT names, or the service's first
        name, port = service_ref(dst)
        svc = b.cluster.services[name]
        chosen = svc.ports[0] if port is None else svc.port_named(port)
        if chosen.protocol != "TCP":
            raise p.err(path + (kind, 1), f"port {chosen.name or chosen.port} of service {name} is "
                                          f"{chosen.protocol}; {kind} tests connect over TCP")
        c.port = chosen.port
    elif kind == "tcp":
        raise p.err(path, "a tcp test needs port: N (the port to connect to)")
    elif kind == "http":
        c.port = 80
    if "timeout" in item:
        t = item["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 60:
            raise p.err(path + ("timeout",), f"timeout must be a number of seconds above 0 and at most 60, got {t!r}")
        c.timeout = float(t)
    elif kind == "http":
        c.timeout = 2.0
    _expect(p, b, c, item.get("expect", "success"), path + ("expect",))
    if "backend" in item:
        value = item["backend"]
        names = value if isinstance(value, list) and value else [value]
        for i, name in enumerate(names):
            if name not in backends.names():
                raise p.err(path + (("backend", i) if isinstance(value, list) else ("backend",)),
                            f"backend must be a flannel backend ({', '.join(backends.names())}) or a list of them, "
                            f"got {name!r}")
        c.backends = tuple(names)
    if "name" in item:
        if not isinstance(item["name"], str) or not item["name"].strip():
            raise p.err(path + ("name",), f"a test name must be a non-empty string, got {item['name']!r}")
        c.name = item["name"].strip()
    else:
        c.name = c.probe_text + ("" if c.expect_ok else " fails")
    return c


def _expect(p, b, c: Check, spec, path) -> None:
    if isinstance(spec, str):
        if spec not in RESULTS:
            raise p.err(path, f"expect must be success, failure or a mapping of {', '.join(sorted(EXPECT_KEYS))}; "
                              f"got {spec!r}")
        c.expect_ok = spec == "success"
        return
    spec = p.mapping(spec, path, EXPECT_KEYS, what="expectation")
    result = spec.get("result", "success")
    if result not in RESULTS:
        raise p.err(path + ("result",), f"result must be success or failure, got {result!r}")
    c.expect_ok = result == "success"
    details = [k for k in ("encap", "ttl", "via", "mtu") if k in spec]
    if details and not c.expect_ok:
        raise p.err(path + (details[0],), f"{details[0]} describes a probe that arrives, so it cannot go with "
                                          f"result: failure")
    if "encap" in spec:
        encap = spec["encap"]
        if encap not in encaps():
            raise p.err(path + ("encap",), f"encap must be one of {', '.join(encaps())}, got {encap!r}")
        c.encap = encap
    if "ttl" in spec:
        ttl = spec["ttl"]
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 255:
            raise p.err(path + ("ttl",), f"ttl must be an integer from 1 to 255, got {ttl!r}")
        c.ttl = ttl
    for key in ("source", "endpoint"):
        if key in spec and (c.kind != "http" or not c.expect_ok):
            raise p.err(path + (key,), f"{key} is read from the answer of nslab's HTTP server: http tests that "
                                       f"expect success only")
    if "source" in spec:
        c.source = str(p.address(spec["source"], path + ("source",)))
    if "endpoint" in spec:
        c.endpoint = _node(p, b, spec["endpoint"], path + ("endpoint",))
    if "via" in spec:
        c.via = _node(p, b, spec["via"], path + ("via",))
        if c.via in (c.src, c.dst):
            raise p.err(path + ("via",), f"via names a node on the way, not the {'source' if c.via == c.src else 'destination'}")
    if "mtu" in spec:
        if c.kind != "ping":
            raise p.err(path + ("mtu",), f"mtu is measured with ping (DF set), not with {c.kind}")
        c.mtu = p.mtu(spec["mtu"], path + ("mtu",))


def _node(p, b, value, path) -> str:
    """A node name; `pod@node` names a daemonset's pod on that node (pod-node)."""
    if isinstance(value, str) and "@" in value:
        alias = value.replace("@", "-", 1)
        if alias in b.nodes:
            return alias
        raise p.err(path, f"no pod {value!r}: {value.split('@')[0]} is not a daemonset running on "
                          f"{value.split('@', 1)[1]} (there is no node {alias})")
    if not isinstance(value, str) or value not in b.nodes:
        names = name_list(n for n, x in b.nodes.items() if x.kind != "switch")
        raise p.err(path, f"unknown node {value!r} (nodes: {names})")
    return value


def _destination(p, b, value, path) -> str:
    if isinstance(value, str) and value.startswith(SVC):
        services = b.cluster.services if b.cluster is not None else {}
        name, port = service_ref(value)
        if name not in services:
            raise p.err(path, f"no service {name!r} (cluster services: {name_list(services)})")
        if services[name].headless:
            raise p.err(path, f"service {name} is headless (clusterIP: None): it has no address to "
                              f"probe; name one of its pods")
        if port is not None and services[name].port_named(port) is None:
            raise p.err(path, f"service {name} has no port {port!r} (its ports: {services[name].port_list()})")
        return value
    if isinstance(value, str) and (value in b.nodes or "@" in value):
        return _node(p, b, value, path)
    try:
        return str(IPv4Address(str(value)))
    except ValueError:
        names = name_list(n for n, x in b.nodes.items() if x.kind != "switch")
        raise p.err(path, f"{value!r} is neither a node nor an IPv4 address (nodes: {names})") from None


def underlay_node(b, name: str) -> str | None:
    """The cluster node whose underlay a probe from `name` leaves by (itself, or a pod's node)."""
    cluster = b.cluster
    if cluster is None:
        return None
    if name in cluster.nodes:
        return name
    pod = cluster.pods.get(name)
    return pod.node if pod else None


def _resolve_addresses(b, checks: list[Check]) -> None:
    owners = {i.ip.ip: n.name for n in b.nodes.values() for i in n.ifaces if i.ip is not None}
    owners.update({br.ip.ip: n.name for n in b.nodes.values() for br in n.bridges if br.ip is not None})
    for c in checks:
        if c.backends and b.cluster is None:
            raise b.err(c.path + ("backend",), "backend: names the flannel backend a test assumes; this topology "
                                               "has no cluster: section")
        kind_path = c.path + (c.kind, 1)
        if c.dst.startswith(SVC):
            c.dst_ip, c.dst_node = str(b.cluster.services[service_ref(c.dst)[0]].cluster_ip), None
        elif c.dst in b.nodes:
            node = b.nodes[c.dst]
            # its first address, not node.addresses (a list of all: tests x interfaces)
            first = next((i.ip for i in node.ifaces if i.ip is not None), None)
            if first is None:
                raise b.err(kind_path, f"{c.dst} has no address to send to")
            c.dst_ip, c.dst_node = str(first.ip), c.dst
        else:
            c.dst_ip, c.dst_node = c.dst, owners.get(IPv4Address(c.dst))
        if c.ttl is not None and c.dst_node is None:
            raise b.err(c.path + ("expect", "ttl"), f"ttl is read where the probe arrives, and no node of this lab "
                                                    f"has address {c.dst}")
