"""The model: a topology file parsed and validated into a resolved lab (no kernel touched).

yamldoc reads YAML with positions; parser walks it; types holds the resolved lab; cluster,
containers, tunnels and tests parse their sections; limits says what this machine can hold."""
from .parser import Builder, Parser, load
from .types import (DEFAULT_MTU, IFNAMSIZ, LAB_NAME_RE, MAX_LAB_NAME, MAX_MTU, MIN_MTU, Bridge, Iface, Nexthop, Node,
                    Route, Segment, Topology, free_subnets, ifname_problem, lab_name_from_file, namespace_name,
                    short_ifname, stable_mac)
from .yamldoc import Doc

__all__ = ["Builder", "Parser", "load", "DEFAULT_MTU", "IFNAMSIZ", "LAB_NAME_RE", "MAX_LAB_NAME", "MAX_MTU", "MIN_MTU",
           "Bridge", "Iface", "Nexthop", "Node", "Route", "Segment", "Topology", "free_subnets", "ifname_problem",
           "lab_name_from_file", "namespace_name", "short_ifname", "stable_mac", "Doc"]
