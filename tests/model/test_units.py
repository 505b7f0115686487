"""units.py parses link conditions exactly as tc(8) of iproute2 6.1 does (the values in the
expectations are what tc puts on the wire for the same text, captured with strace), and
refuses everything else with one sentence naming the value and the accepted forms."""
from __future__ import annotations

import pytest

from nslab.model.units import (Conditions, ConditionsError, format_percent, format_rate, format_size, format_time,
                         parse_limit, parse_percent, parse_rate, parse_size, parse_time)


@pytest.mark.parametrize("text, bytes_per_s", [
    ("100mbit", 12_500_000), ("1gbit", 125_000_000), ("10kbit", 1250), ("50Mbit", 6_250_000),
    ("1MBIT", 125_000), ("8bit", 1), ("10bit", 1),            # truncated to whole bytes, as tc does
    (1_000_000, 125_000), ("1000000", 125_000),               # a bare number is bits/s
    ("1bps", 1), ("1mbps", 1_000_000), ("1MBps", 1_000_000),   # bps is BYTES/s in tc
    ("1kbps", 1000), ("1gbps", 1_000_000_000),
    ("100Kibit", 12_800), ("1mibit", 131_072), ("1kibps", 1024),
    ("3.5mbit", 437_500), ("1e6bit", 125_000), (".5mbit", 62_500),
    ("40gbit", 5_000_000_000),                                 # past 32 bits: tc's RATE64 case
])
def test_rate_like_tc(text, bytes_per_s):
    assert parse_rate(text) == bytes_per_s


@pytest.mark.parametrize("text", ["", "mbit", "100 mbit", "100mb", "100m", "100mbit/s", "-1mbit", "0x10mbit",
                                  "inf", "nan", "1e400mbit", " 100mbit", "100mbitx", True, None, [1], "7bit", 0,
                                  "\u0661\u0662mbit"])
def test_rate_refused(text):
    with pytest.raises(ValueError) as e:
        parse_rate(text)
    msg = str(e.value)
    assert "\n" not in msg and repr(text) in msg
    assert "rate" in msg


def test_rate_message_names_forms():
    msg = str(pytest.raises(ValueError, parse_rate, "100mb").value)
    assert "'100mb'" in msg and "mbit" in msg and "bps" in msg and "bytes/s" in msg


@pytest.mark.parametrize("text, usec", [
    ("20ms", 20_000), ("5us", 5), ("1s", 1_000_000), ("1.5ms", 1500), ("20", 20), (20, 20),
    ("2msecs", 2000), ("300usecs", 300), ("1sec", 1_000_000), ("2SECS", 2_000_000), ("1MS", 1000),
    ("0.5us", 0), ("0", 0), ("274s", 274_000_000),
])
def test_time_like_tc(text, usec):
    assert parse_time(text) == usec


@pytest.mark.parametrize("text", ["20 ms", "20min", "1h", "ms", "-5ms", "20ns", "275s", "1e9s", False])
def test_time_refused(text):
    with pytest.raises(ValueError) as e:
        parse_time(text, "delay")
    assert str(e.value).startswith("delay ") and repr(text) in str(e.value)


@pytest.mark.parametrize("text, scaled", [
    ("1%", 42_949_673), ("0.5%", 21_474_836), ("0.5", 21_474_836), (1, 42_949_673), ("100%", 0xFFFFFFFF),
    ("0%", 0), ("0.001%", 42_950), ("33.333333%", 1_431_655_751),
])
def test_percent_like_tc(text, scaled):
    # tc: rint(percent / 100 * UINT32_MAX); a bare number is already a percentage
    assert parse_percent(text) == scaled


@pytest.mark.parametrize("text", ["101%", "1 %", "%", "1%%", "one%", "-1%", "1e3", "50 percent"])
def test_percent_refused(text):
    with pytest.raises(ValueError) as e:
        parse_percent(text)
    assert repr(text) in str(e.value)


@pytest.mark.parametrize("text, size", [
    ("32kb", 32_768), ("32k", 32_768), ("32KB", 32_768), ("1mb", 1 << 20), ("1m", 1 << 20), ("1g", 1 << 30),
    ("32kbit", 4096), ("1mbit", 131_072), ("1514", 1514), (1514, 1514), ("1514b", 1514), ("1.5kb", 1536),
])
def test_size_like_tc(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["32kib", "32 kb", "0", "5gb", "kb", "1t"])
def test_size_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_limit_is_a_packet_count():
    assert parse_limit(1000) == 1000 and parse_limit("1000") == 1000
    for bad in (0, -1, "1k", 1.5, True, "1000p", 1 << 32, "\u00b2"):
        with pytest.raises(ValueError) as e:
            parse_limit(bad)
        assert "packets" in str(e.value)


@pytest.mark.parametrize("bytes_per_s, text", [
    (6_250_000, "50Mbit"), (12_500_000, "100Mbit"), (187_500, "1500Kbit"), (154_320, "1234Kbit"),
    (1250, "10Kbit"), (1, "8bit"), (12_800, "102400bit"), (5_000_000_000, "40Gbit"), (125_000_000_000, "1Tbit"),
])
def test_rate_printed_like_tc(bytes_per_s, text):
    assert format_rate(bytes_per_s) == text


def test_other_values_printed_like_tc():
    assert [format_time(u) for u in (20_000, 1500, 5, 1_000_000, 1_499, 123_456)] == \
        ["20ms", "1.5ms", "5us", "1s", "1.5ms", "123ms"]
    assert [format_size(s) for s in (32_768, 32_762, 1514, 1 << 20, 4096)] == ["32Kb", "32Kb", "1514b", "1Mb", "4Kb"]
    assert [format_percent(parse_percent(p)) for p in ("1%", "0.5", "100%", "0.001%")] == \
        ["1%", "0.5%", "100%", "0.00100001%"]


def test_conditions_parse_and_describe():
    c = Conditions.parse({"rate": "100mbit", "delay": "20ms", "jitter": "5ms", "loss": "1%", "limit": 1000})
    assert c == Conditions(rate_bytes=12_500_000, delay_us=20_000, jitter_us=5000, loss_u32=42_949_673, limit=1000)
    assert c.describe() == "rate 100Mbit delay 20ms jitter 5ms loss 1% limit 1000"
    assert c.kind == "netem" and c.needs_netem
    assert c.loss_percent == pytest.approx(1.0)
    rate = Conditions.parse({"rate": "50mbit", "burst": "32kb"})
    assert rate.kind == "tbf" and not rate.needs_netem and rate.describe() == "rate 50Mbit burst 32Kb"
    assert Conditions.parse({}).empty and Conditions.parse({"delay": "0ms", "loss": 0}).kind is None


@pytest.mark.parametrize("mapping", [
    {"rate": "100mbit", "delay": "1.5ms", "jitter": 300, "loss": "0.001", "limit": 5},
    {"rate": "1234567bit", "burst": "32762"}, {"loss": "33.333333%"}, {"rate": "40gbit", "burst": "1mb"},
    {"delay": "0.5ms", "loss": 0},
])
def test_record_form_reparses_exactly(mapping):
    c = Conditions.parse(mapping)
    again = Conditions.parse(c.to_mapping())
    assert again == c


def test_record_form_is_tc_like_where_exact():
    c = Conditions.parse({"rate": "100mbit", "delay": "20ms", "loss": "1%"})
    assert c.to_mapping() == {"rate": "100Mbit", "delay": "20ms", "loss": "1%"}


@pytest.mark.parametrize("mapping, key, words", [
    ({"rate": "100mb"}, "rate", "unknown unit"),
    ({"bandwidth": "1mbit"}, "bandwidth", "unknown condition"),
    ({"jitter": "5ms"}, "jitter", "needs a delay"),
    ({"delay": "5ms", "rate": "1mbit", "burst": "32kb"}, "burst", "no burst"),
    ({"burst": "32kb"}, "burst", "needs a rate"),
    ({"limit": 100}, "limit", "needs a rate"),
    ({"loss": "200%"}, "loss", "over 100%"),
])
def test_conditions_errors_name_the_key(mapping, key, words):
    with pytest.raises(ConditionsError) as e:
        Conditions.parse(mapping)
    assert e.value.key == key and words in str(e.value) and "\n" not in str(e.value)


def test_conditions_must_be_a_mapping():
    with pytest.raises(ConditionsError) as e:
        Conditions.parse(["rate", "1mbit"])
    assert e.value.key is None


def test_merged_and_without_netem():
    declared = Conditions.parse({"rate": "100mbit", "loss": "1%"})
    changed = declared.merged(Conditions.parse({"delay": "50ms"}))
    assert changed.describe() == "rate 100Mbit delay 50ms loss 1%"
    assert changed.without_netem() == Conditions(rate_bytes=12_500_000)
