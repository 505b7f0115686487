"""tc encoding at its edges, where mutation testing found nothing watching (tests/README.md):
the link's MTU reaches the bucket, a burst of exactly one full frame passes and one byte
less is refused (naming `burst`), 64-bit rates from exactly 2**32 bytes/s, and a 64-bit
tbf rate read back."""
from __future__ import annotations

import struct

import pytest

from nslab.apply import qdisc as tc
from nslab.model.units import Conditions, ConditionsError


def attr_types(opts: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 4 <= len(opts):
        length, atype = struct.unpack_from("=HH", opts, pos)
        out.append(atype)
        pos += (length + 3) & ~3
    return out


def test_the_links_mtu_sets_the_smallest_bucket():
    jumbo = Conditions(rate_bytes=125_000)       # 1mbit: the bucket is one frame (more than the 32 KB minimum)
    burst = struct.unpack("=I", tc.tbf_options(jumbo, 65_000)[-4:])[0]  # TCA_TBF_BURST comes last
    assert burst == 65_014
    assert tc.encode_set(3, jumbo, mtu=65_000) == tc.encode_set(3, Conditions(rate_bytes=125_000, burst=65_014), mtu=65_000)
    assert tc.encode_set(3, jumbo, mtu=65_000) != tc.encode_set(3, jumbo)


def test_a_burst_of_one_full_frame_passes_and_one_byte_less_is_refused():
    tc.tbf_options(Conditions(rate_bytes=125_000, burst=1514), 1500)
    with pytest.raises(ConditionsError) as e:
        tc.tbf_options(Conditions(rate_bytes=125_000, burst=1513), 1500)
    assert e.value.key == "burst"
    assert str(e.value) == "burst 1513b is below a full frame of this link (1514b): such packets would never pass"


@pytest.mark.parametrize("rate,wide", [(2**32 - 1, False), (2**32, True)])
def test_64_bit_rates_from_exactly_two_to_the_32(rate, wide):
    tbf = attr_types(tc.tbf_options(Conditions(rate_bytes=rate, burst=2**20)))
    assert (tc.TCA_TBF_RATE64 in tbf) == wide
    netem = attr_types(tc.netem_options(Conditions(rate_bytes=rate, delay_us=1000))[tc._NETEM_QOPT.size:])
    assert (tc.TCA_NETEM_RATE64 in netem) == wide and tc.TCA_NETEM_RATE in netem


def test_a_64_bit_tbf_rate_reads_back():
    opts = tc.tbf_options(Conditions(rate_bytes=5 * 2**30, burst=2**20))
    assert tc.decode_tbf(opts).rate_bytes == 5 * 2**30


def test_nothing_to_set_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^no conditions to set \(use encode_clear\)$"):
        tc.encode_set(2, Conditions())
