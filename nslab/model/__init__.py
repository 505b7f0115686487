"""The model: a topology file parsed and validated into a resolved lab (no kernel touched).

yamldoc reads YAML with positions; parser walks it; types holds the resolved lab; cluster,
containers, tunnels and tests parse their sections; limits says what this machine can hold.

The names below load on first use (PEP 562): `nslab down`/`ls` use model.containers alone and
must not pay for the parser and PyYAML at start-up."""
import importlib

_FROM = {"Builder": "parser", "Parser": "parser", "load": "parser", "Doc": "yamldoc",
         **dict.fromkeys(["DEFAULT_MTU", "IFNAMSIZ", "LAB_NAME_RE", "MAX_LAB_NAME", "MAX_MTU", "MIN_MTU", "Bridge",
                          "Iface", "Nexthop", "Node", "Route", "Segment", "Topology", "free_subnets", "ifname_problem",
                          "lab_name_from_file", "namespace_name", "short_ifname", "stable_mac"], "types")}
__all__ = list(_FROM)


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)   # lazy: start-up
    globals()[name] = value
    return value
