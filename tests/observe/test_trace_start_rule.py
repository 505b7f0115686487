"""trace's path rules where the clock would mislead (nslab/observe/trace.py build_path).

- Without a known start (an ICMP error), the path starts at the node whose first sighting
  is outgoing; time only breaks ties.  Timestamps of different namespaces' sockets can
  disagree with causality (poll order, frames without a kernel timestamp), so the data here
  makes time point at the wrong node.
- From each node the path follows the link the packet *left* by: the peer of an incoming
  sighting is where it came from, and that node may be visited again later.
"""
from __future__ import annotations

from nslab.observe.trace import Obs, build_path


def obs(node, iface, d, order, t):
    return Obs(node, iface, d, t, order, "request", [])


def link(*pairs):
    """Peers both ways from [(node, iface), (node, iface)] pairs."""
    peers = {}
    for a, b in pairs:
        peers[a], peers[b] = b, a
    return peers


# client -- r1 (a | b) -- lb: an external load balancer behind the router
PEERS = link((("client", "eth0"), ("r1", "a")), (("r1", "b"), ("lb", "eth0")))


def hops(path):
    return [(o.node, o.iface, o.dir) for o in path]


def test_icmp_error_starts_where_it_was_sent_even_when_the_clock_says_otherwise():
    # r1 answers with an ICMP error (out of a, towards the client); the client's socket
    # stamped its copy earlier than r1's (t 40 < 50): time alone would start at the client.
    seen = [obs("client", "eth0", "in", 1, 40), obs("r1", "a", "out", 1, 50)]
    path, rest = build_path(seen, None, PEERS)
    assert hops(path) == [("r1", "a", "out"), ("client", "eth0", "in")]
    assert rest == []


def test_time_breaks_a_tie_between_two_nodes_first_seen_sending():
    # Both nodes' first sighting is outgoing; the earlier one is the start, whatever order
    # the nodes were read in (lb's sightings come first in the list).
    seen = [obs("lb", "eth0", "out", 1, 70), obs("r1", "a", "out", 1, 60), obs("client", "eth0", "in", 1, 65)]
    path, rest = build_path(seen, None, PEERS)
    assert hops(path) == [("r1", "a", "out"), ("client", "eth0", "in")]
    assert hops(rest) == [("lb", "eth0", "out")]


def test_path_follows_the_link_left_by_not_the_one_arrived_by():
    # The load balancer sends the packet back to the client (hairpin through r1): the client
    # is visited twice.  At r1's first visit the link it arrived by (a) leads to the client,
    # which still has a visit to come; the packet left by b, towards lb.
    seen = [obs("client", "eth0", "out", 1, 10), obs("client", "eth0", "in", 2, 60),
            obs("r1", "a", "in", 1, 20), obs("r1", "b", "out", 2, 30),
            obs("r1", "b", "in", 3, 45), obs("r1", "a", "out", 4, 50),
            obs("lb", "eth0", "in", 1, 35), obs("lb", "eth0", "out", 2, 40)]
    path, rest = build_path(seen, "client", PEERS)
    assert hops(path) == [("client", "eth0", "out"), ("r1", "a", "in"), ("r1", "b", "out"),
                          ("lb", "eth0", "in"), ("lb", "eth0", "out"),
                          ("r1", "b", "in"), ("r1", "a", "out"), ("client", "eth0", "in")]
    assert rest == []
