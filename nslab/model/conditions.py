"""`conditions:` in a topology: rate, delay, jitter, loss and limit on a link, a link end, a
segment member or a segment.

Where they apply: each interface shapes what it SENDS (a qdisc acts on egress), so
- on a link, a segment or a segment member: both ends of each veth, i.e. both directions
  (a link with `delay: 20ms` delays each way: ping's round trip gains 40 ms);
- on a link end: that end only (the direction away from its node), on top of the link's.
A more specific level's values replace the wider level's, key by key (merged()).
"""
from __future__ import annotations

from .units import Conditions, ConditionsError, format_size

KEY = "conditions"
ETH_HLEN = 14


def parse(p, value, path: tuple) -> Conditions | None:
    """The Conditions of a `conditions:` value at path (the key's own path), None when empty;
    a bad value is a TopologyError naming the offending key."""
    if value is None:
        return None
    try:
        cond = Conditions.parse(value)
    except ConditionsError as e:
        raise p.err(path + ((e.key,) if e.key is not None and isinstance(value, dict) else ()), str(e)) from None
    return None if cond.empty else cond


def merged(wide: Conditions | None, narrow: Conditions | None) -> Conditions | None:
    """narrow's values on top of wide's (a link end over its link, a member over its segment)."""
    if wide is None or narrow is None:
        return narrow or wide
    cond = wide.merged(narrow)
    cond.check()
    return cond


def check_burst(p, cond: Conditions | None, mtu: int, path: tuple) -> None:
    """tbf's bucket must hold a whole frame of the interface, or such frames never pass."""
    if cond is not None and cond.burst is not None and cond.burst < mtu + ETH_HLEN:
        raise p.err(path + (KEY, "burst"), f"burst {format_size(cond.burst)} is below a full frame of this "
                                           f"interface ({mtu + ETH_HLEN}b at MTU {mtu}): such packets would never pass")
