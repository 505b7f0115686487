"""Link conditions and their units, parsed the way tc(8) of iproute2 6.1 parses them.

tc's own rules (tc_util.c / utils.c), kept exactly because users copy values from tc:
- rate: a number with bit, kbit, mbit, gbit, tbit (decimal, bits/s), kibit, mibit, gibit,
  tibit (binary, bits/s), bps, kbps, mbps, gbps, tbps (BYTES/s: "mbps" is megabytes), or
  kibps ... tibps; suffixes in any case; a bare number is bits/s.  The kernel keeps bytes/s,
  truncated (10bit is 1 byte/s).
- time: s, sec, secs, ms, msec, msecs, us, usec, usecs; a bare number is MICROseconds.
  Truncated to whole microseconds.
- percent: "1%", or a bare number that is already a percentage ("0.5" is 0.5 %), 0..100.
- size (burst): b, k/kb (1024 bytes), m/mb, g/gb, kbit/mbit/gbit (1024-based bits: 32kbit is
  4096 bytes); a bare number is bytes.
Where tc's strtod() would also take hex, inf, nan or leading blanks, we refuse: nobody means
those.  `limit` is a packet count (netem's), a plain integer.

Values are kept in the kernel's units (bytes/s, microseconds, bytes, packets) so that what is
read back from the kernel compares equal to what was declared.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace

# strtod()'s decimal form, ASCII digits only (\d would take other scripts' digits)
_NUMBER = re.compile(r"([0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)(.*)", re.S)

# tc_util.c's suffixes[] (bits per unit); strcasecmp, so the table is lower case here.
RATE_SUFFIXES = {
    "bit": 1, "kibit": 1024, "kbit": 1000, "mibit": 1024 ** 2, "mbit": 1000 ** 2,
    "gibit": 1024 ** 3, "gbit": 1000 ** 3, "tibit": 1024 ** 4, "tbit": 1000 ** 4,
    "bps": 8, "kibps": 8 * 1024, "kbps": 8000, "mibps": 8 * 1024 ** 2, "mbps": 8 * 1000 ** 2,
    "gibps": 8 * 1024 ** 3, "gbps": 8 * 1000 ** 3, "tibps": 8 * 1024 ** 4, "tbps": 8 * 1000 ** 4,
}
TIME_SUFFIXES = {"s": 1_000_000, "sec": 1_000_000, "secs": 1_000_000, "ms": 1000, "msec": 1000, "msecs": 1000,
                 "us": 1, "usec": 1, "usecs": 1}
SIZE_SUFFIXES = {"b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3,
                 "kbit": 1024 // 8, "mbit": 1024 * 1024 // 8, "gbit": 1024 * 1024 * 1024 // 8}

RATE_FORMS = "a number with bit, kbit, mbit, gbit (bits/s) or bps, kbps, mbps (bytes/s, as tc means them), e.g. 100mbit"
TIME_FORMS = "a number with s, ms or us (a bare number is microseconds, as in tc), e.g. 20ms"
PERCENT_FORMS = "a percentage from 0 to 100, e.g. 1% or 0.5%"
SIZE_FORMS = "a byte count, optionally with b, kb, mb or gb (1024-based, as in tc), e.g. 32kb"
LIMIT_FORMS = "a whole number of packets from 1 to 4294967295, e.g. 1000"

U32_MAX = 0xFFFFFFFF
TICKS_PER_USEC = 15.625     # /proc/net/psched on every kernel since 2.6.31: 1000 ns/us over 64 ns ticks
# What nslab fills in where the topology does not say (apply/qdisc.py sends it, `nslab script`
# prints it): the same numbers in both, so the script rebuilds the lab apply made.
NETEM_DEFAULT_LIMIT = 1000          # packets: what tc sends when no limit is given
TBF_DEFAULT_LATENCY_US = 50_000     # tbf needs a queue bound: tc's `latency 50ms`
TBF_MIN_BURST = 32 * 1024           # bytes: above any MTU nslab makes, so no packet waits forever
ETH_HLEN = 14


def _split(value, what: str, forms: str) -> tuple[float, str]:
    """(number, suffix in lower case) of a YAML scalar: a number, or a string that starts with one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} {value!r} is not {forms}")
    if isinstance(value, (int, float)):
        number, suffix = float(value), ""
    else:
        m = _NUMBER.fullmatch(value)
        if not m:
            raise ValueError(f"{what} {value!r} is not {forms}")
        number, suffix = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} {value!r} is not {forms}")
    return number, suffix


def parse_rate(value) -> int:
    """Bytes per second, as tc puts it in tc_ratespec (and in the 64-bit attribute past 4 GB/s)."""
    number, suffix = _split(value, "rate", RATE_FORMS)
    if suffix and suffix not in RATE_SUFFIXES:
        raise ValueError(f"rate {value!r} has an unknown unit {suffix!r}; a rate is {RATE_FORMS}")
    rate = int(number * RATE_SUFFIXES.get(suffix, 1) / 8)
    if rate < 1:
        raise ValueError(f"rate {value!r} is below 8bit (1 byte/s), the least the kernel can shape to")
    if rate >= 1 << 64:
        raise ValueError(f"rate {value!r} is too large for the kernel (64-bit bytes/s)")
    return rate


def parse_time(value, what: str = "time") -> int:
    """Microseconds (tc's get_time), at most what netem's 32-bit 64 ns ticks hold (about 274 s)."""
    number, suffix = _split(value, what, TIME_FORMS)
    if suffix and suffix not in TIME_SUFFIXES:
        raise ValueError(f"{what} {value!r} has an unknown unit {suffix!r}; a time is {TIME_FORMS}")
    usec = int(number * TIME_SUFFIXES.get(suffix, 1))
    if usec * TICKS_PER_USEC > U32_MAX:
        raise ValueError(f"{what} {value!r} is too large: the kernel holds at most 274s")
    return usec


def parse_percent(value, what: str = "loss") -> int:
    """netem's probability scale, 0..2^32-1 (tc's get_percent: rint(percent / 100 * UINT32_MAX));
    a bare number is already a percentage, as in tc."""
    bad = ValueError(f"{what} {value!r} is not {PERCENT_FORMS}")
    body = value
    if isinstance(value, str) and value.endswith("%"):
        body = value[:-1]
        if not body or body[-1:] in "% " or body.startswith(" "):
            raise bad
    try:
        number, suffix = _split(body, what, PERCENT_FORMS)
    except ValueError:
        raise bad from None
    if suffix:
        raise bad
    if number > 100:
        raise ValueError(f"{what} {value!r} is over 100%")
    return percent_to_u32(number)


def percent_to_u32(percent: float) -> int:
    return round(percent / 100 * U32_MAX)     # C's rint() rounds half to even, as round() does


def u32_to_percent(value: int) -> float:
    return 100 * value / U32_MAX


def parse_size(value, what: str = "burst") -> int:
    """Bytes (tc's get_size: kb is 1024 bytes, kbit 128)."""
    number, suffix = _split(value, what, SIZE_FORMS)
    if suffix and suffix not in SIZE_SUFFIXES:
        raise ValueError(f"{what} {value!r} has an unknown unit {suffix!r}; a size is {SIZE_FORMS}")
    size = int(number * SIZE_SUFFIXES.get(suffix, 1))
    if not 1 <= size <= U32_MAX:
        raise ValueError(f"{what} {value!r} is not between 1 byte and 4gb")
    return size


def parse_limit(value) -> int:
    """Packets queued (netem's limit)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= U32_MAX:
        raise ValueError(f"limit {value!r} is not {LIMIT_FORMS}")
    return value


# ---- printing, as tc qdisc show prints (iproute2 6.1 lib/utils.c) ---------------------------

def format_rate(rate_bytes: int) -> str:
    """sprint_rate(): 50Mbit, 1500Kbit, 8bit (integer steps of 1000 while exact or >= 1M)."""
    rate = rate_bytes * 8
    units = ["", "K", "M", "G", "T"]
    i = 0
    while i < len(units) - 1:
        if rate < 1000 or (rate % 1000 and rate < 1000 * 1000):
            break
        rate //= 1000
        i += 1
    return f"{rate}{units[i]}bit"


def _g3(x: float) -> str:
    return f"{x:.3g}"


def format_time(usec: int) -> str:
    """print_time(): 20ms, 1.5ms, 5us, 1s (%.3g)."""
    if usec >= 1_000_000:
        return _g3(usec / 1_000_000) + "s"
    if usec >= 1000:
        return _g3(usec / 1000) + "ms"
    return f"{usec}us"


def format_percent(value: int) -> str:
    """print_percent() of netem's scaled probability: %g (1%, 0.5%)."""
    return f"{u32_to_percent(value):g}%"


def format_size(size: int) -> str:
    """sprint_size(): 32Kb, 1Mb, 1514b."""
    if size >= 1024 * 1024 and abs(1024 * 1024 * round(size / (1024 * 1024)) - size) < 1024:
        return f"{round(size / (1024 * 1024)):g}Mb"
    if size >= 1024 and abs(1024 * round(size / 1024) - size) < 16:
        return f"{round(size / 1024):g}Kb"
    return f"{size}b"


# ---- conditions -------------------------------------------------------------------------------

class ConditionsError(ValueError):
    """A bad `conditions:` value; `key` is the offending key (for the model's file:line path)."""

    def __init__(self, key: str | None, message: str):
        super().__init__(message)
        self.key = key


KEYS = ("rate", "delay", "jitter", "loss", "limit", "burst")


@dataclass(frozen=True)
class Conditions:
    """What a link end is shaped to.  None = not set.  Units are the kernel's.

    rate_bytes: bytes/s; delay_us, jitter_us: microseconds; loss_u32: netem's probability
    scale (0 .. 2^32-1 = 100 %, see loss_percent); limit: packets queued; burst: bytes (tbf's
    bucket, rate alone only)."""
    rate_bytes: int | None = None
    delay_us: int | None = None
    jitter_us: int | None = None
    loss_u32: int | None = None
    limit: int | None = None
    burst: int | None = None

    @classmethod
    def parse(cls, mapping, check: bool = True) -> "Conditions":
        """From a `conditions:` mapping; ConditionsError names the bad key and the accepted forms.
        check=False: a change to merge onto others (`link set --jitter` over a delay)."""
        if not isinstance(mapping, dict):
            raise ConditionsError(None, f"conditions must be a mapping of {', '.join(KEYS)}")
        for key in mapping:
            if key not in KEYS:
                raise ConditionsError(key, f"unknown condition {key!r}; known: {', '.join(KEYS)}")
        parsers = {"rate": parse_rate, "delay": lambda v: parse_time(v, "delay"),
                   "jitter": lambda v: parse_time(v, "jitter"), "loss": parse_percent,
                   "limit": parse_limit, "burst": parse_size}
        names = {"rate": "rate_bytes", "delay": "delay_us", "jitter": "jitter_us", "loss": "loss_u32"}
        values = {}
        for key, value in mapping.items():
            try:
                values[names.get(key, key)] = parsers[key](value)
            except ValueError as e:
                raise ConditionsError(key, str(e)) from None
        cond = cls(**values)
        if check:
            cond.check()
        return cond

    def check(self) -> None:
        """Combinations tc or the chosen qdisc cannot express."""
        if self.jitter_us and not self.delay_us:
            raise ConditionsError("jitter", "jitter needs a delay to vary around (netem's delay TIME JITTER)")
        if self.burst is not None and self.needs_netem:
            raise ConditionsError("burst", "burst applies to a rate alone (tbf); with delay, jitter or loss the "
                                           "rate is netem's own, which has no burst")
        if self.burst is not None and not self.rate_bytes:
            raise ConditionsError("burst", "burst needs a rate (it is the token bucket's size)")
        if self.limit is not None and self.kind is None:
            raise ConditionsError("limit", "limit needs a rate, delay or loss (it is the length of their queue)")

    # What the kernel needs for these conditions.
    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_us or self.jitter_us or self.loss_u32)

    @property
    def loss_percent(self) -> float | None:
        return None if self.loss_u32 is None else u32_to_percent(self.loss_u32)

    @property
    def kind(self) -> str | None:
        """The root qdisc these conditions become: 'netem', 'tbf' (rate alone) or None (nothing)."""
        if self.needs_netem:
            return "netem"
        return "tbf" if self.rate_bytes else None

    @property
    def empty(self) -> bool:
        return self.kind is None

    def without_netem(self) -> "Conditions":
        """The part this kernel can do without netem (for `continue without delay/loss`)."""
        return Conditions(rate_bytes=self.rate_bytes, burst=self.burst)

    def merged(self, other: "Conditions") -> "Conditions":
        """self with other's set values on top (`link set --delay` keeps a declared rate)."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(other)
                                if getattr(other, f.name) is not None})

    def describe(self) -> str:
        """'rate 100Mbit delay 20ms jitter 5ms loss 1%' with values as tc qdisc show prints them."""
        parts = []
        if self.rate_bytes:
            parts.append(f"rate {format_rate(self.rate_bytes)}")
        if self.burst:
            parts.append(f"burst {format_size(self.burst)}")
        if self.delay_us:
            parts.append(f"delay {format_time(self.delay_us)}")
        if self.jitter_us:
            parts.append(f"jitter {format_time(self.jitter_us)}")
        if self.loss_u32:
            parts.append(f"loss {format_percent(self.loss_u32)}")
        if self.limit:
            parts.append(f"limit {self.limit}")
        return " ".join(parts)

    def to_pairs(self) -> tuple:
        """The plan's form (plan.Qdisc.conditions): (key, text) pairs; from_pairs reads them."""
        return tuple((k, str(v)) for k, v in self.to_mapping().items())

    @classmethod
    def from_pairs(cls, pairs) -> "Conditions":
        return cls.parse(dict(pairs))

    def to_mapping(self) -> dict:
        """Re-parsable strings (for the lab record): parse(to_mapping()) == self.  tc's print
        form where it reads back exactly, else an exact form (bps is bytes/s in tc)."""
        def exact(short: str, parse, value, fallback: str) -> str:
            return short if parse(short) == value else fallback
        out: dict = {}
        if self.rate_bytes is not None:
            out["rate"] = exact(format_rate(self.rate_bytes), parse_rate, self.rate_bytes, f"{self.rate_bytes}bps")
        if self.burst is not None:
            out["burst"] = exact(format_size(self.burst), parse_size, self.burst, f"{self.burst}b")
        for key, value in (("delay", self.delay_us), ("jitter", self.jitter_us)):
            if value is not None:
                out[key] = exact(format_time(value), parse_time, value, f"{value}us")
        if self.loss_u32 is not None:
            out["loss"] = exact(format_percent(self.loss_u32), parse_percent, self.loss_u32,
                                f"{u32_to_percent(self.loss_u32)!r}%")
        if self.limit is not None:
            out["limit"] = self.limit
        return out


def effective(cond: Conditions, mtu: int = 1500) -> Conditions:
    """The conditions with the defaults the encoder fills in (what the kernel then holds)."""
    if cond.kind == "netem":
        return replace(cond, limit=cond.limit or NETEM_DEFAULT_LIMIT)
    if cond.kind == "tbf":
        burst = cond.burst or max(TBF_MIN_BURST, cond.rate_bytes // 250, mtu + ETH_HLEN)   # >= 4 ms at rate
        return replace(cond, burst=burst)
    return cond


def tc_args(cond: Conditions, mtu: int = 1500) -> list[str]:
    """`tc qdisc replace dev DEV root` + these words sets what apply/qdisc.py sends."""
    eff = effective(cond, mtu)
    m = eff.to_mapping()
    if eff.kind == "tbf":
        queue = ["limit", f"{eff.limit * (mtu + ETH_HLEN)}b"] if eff.limit else \
            ["latency", format_time(TBF_DEFAULT_LATENCY_US)]
        return ["tbf", "rate", m["rate"], "burst", m["burst"], *queue]
    if eff.kind == "netem":
        out = ["netem"]
        if eff.delay_us:
            out += ["delay", m["delay"]] + ([m["jitter"]] if eff.jitter_us else [])
        if eff.loss_u32:
            out += ["loss", m["loss"]]
        if eff.rate_bytes:
            out += ["rate", m["rate"]]
        return out + ["limit", str(eff.limit)]
    return []
