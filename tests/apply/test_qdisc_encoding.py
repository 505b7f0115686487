"""tc.py's qdisc messages, byte for byte.

The reference bytes are what iproute2 6.1's `tc qdisc replace dev v0 root ...` sent, captured
with `strace -e sendmsg -xx` in a throwaway namespace (TCA_OPTIONS payloads below; tbf's
TCA_TBF_RTAB attribute removed, as tc.py does not send it).  netem is absent from this
machine's kernel, but tc encodes before the kernel refuses, so its bytes are real tc's too.
The kernel side (tbf accepted, read back, shaping traffic) is tests/integration/test_tc_shaping.py.
"""
from __future__ import annotations

import gzip
import os
import socket
import struct
import threading

import pytest

from nslab.apply import qdisc as tc
from nslab.model.units import Conditions

TC_BYTES = {
    # tc arguments: (our conditions, TCA_OPTIONS payload tc sent)
    "tbf rate 50mbit burst 32kb latency 50ms": (
        {"rate": "50mbit"},
        "2800010003010000ffff0000105e5f00000000000000000000000000b4440500f23f0100000000000800060000800000"),
    "tbf rate 40gbit burst 1mb latency 50ms": (
        {"rate": "40gbit", "burst": "1mb"},
        "2800010003010000ffff0000ffffffff00000000000000000000000080b2f60ee40e00000000000008000600000010000c0004"
        "0000f2052a01000000"),
    "tbf rate 7mbps burst 4096 limit 151400": (
        {"rate": "7mbps", "burst": "32kbit", "limit": 100},     # 100 packets of 1500 + 14 bytes
        "2800010003010000ffff0000c0cf6a00000000000000000000000000684f0200b4230000000000000800060000100000"),
    "netem delay 20ms 5ms loss 1% rate 100mbit": (
        {"rate": "100mbit", "delay": "20ms", "jitter": "5ms", "loss": "1%"},
        "b4c40400e8030000295c8f0200000000000000002d3101001400060020bcbe00000000000000000000000000"),
    "netem delay 10ms rate 40gbit": (
        {"delay": "10ms", "rate": "40gbit"},
        "5a620200e8030000000000000000000000000000000000000c00080000f2052a0100000014000600ffffffff000000000000"
        "000000000000"),
    "netem delay 2msecs 300usecs rate 10bit": (
        {"delay": "2msecs", "jitter": "300usecs", "rate": "10bit"},
        "127a0000e80300000000000000000000000000004f1200001400060001000000000000000000000000000000"),
    "netem loss 0.001% limit 5000": (
        {"loss": "0.001%", "limit": 5000}, "0000000088130000c6a70000000000000000000000000000"),
    "netem delay 20": ({"delay": 20}, "38010000e803000000000000000000000000000000000000"),   # bare = us
}


def _attrs(buf):
    out, pos = [], 0
    while pos + 4 <= len(buf):
        length, atype = struct.unpack_from("=HH", buf, pos)
        out.append((atype, buf[pos + 4:pos + length]))
        pos += (length + 3) & ~3
    return out


@pytest.mark.parametrize("args", sorted(TC_BYTES))
def test_options_are_tcs_bytes(args):
    mapping, expected = TC_BYTES[args]
    msg = tc.encode_set(7, Conditions.parse(mapping))
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, flags, seq, pid) == (len(msg), 36, 0x505, 0, 0)   # RTM_NEWQDISC, tc's replace flags
    family, ifindex, handle, parent, info = struct.unpack_from("=BxxxiIII", msg, 16)
    assert (family, ifindex, handle, parent, info) == (0, 7, 0, 0xFFFFFFFF, 0)  # root, kernel picks the handle
    attrs = _attrs(bytes(msg[36:]))
    assert [a for a, _ in attrs] == [1, 2]                                    # TCA_KIND, TCA_OPTIONS
    assert attrs[0][1] == args.split()[0].encode() + b"\0"
    assert attrs[1][1].hex() == expected


def test_tbf_has_no_rate_table():
    # The kernel reads TCA_TBF_RTAB only for a linklayer-unaware ratespec; ours says ethernet.
    opts = tc.tbf_options(Conditions.parse({"rate": "50mbit"}))
    assert [a for a, _ in _attrs(opts)] == [tc.TCA_TBF_PARMS, tc.TCA_TBF_BURST]
    assert opts[4 + 1] == tc.TC_LINKLAYER_ETHERNET


def test_clear_and_dump_messages():
    assert tc.encode_clear(5).hex() == (
        "24000000" "2500" "0500" "00000000" "00000000"          # RTM_DELQDISC, request|ack
        "00000000" "05000000" "00000000" "ffffffff" "00000000")  # `tc qdisc del dev X root`
    dump = tc.encode_dump_qdiscs()
    assert struct.unpack_from("=IHH", dump) == (36, 38, 0x301)   # RTM_GETQDISC, request|dump


def test_default_burst_and_limit():
    assert tc.effective(Conditions.parse({"rate": "50mbit"})).burst == 32 * 1024
    assert tc.effective(Conditions.parse({"rate": "1gbit"})).burst == 500_000      # 4 ms at rate
    assert tc.effective(Conditions.parse({"rate": "1mbit"}), mtu=65_000).burst == 65_014
    assert tc.effective(Conditions.parse({"loss": "1%"})).limit == 1000
    with pytest.raises(ValueError) as e:
        tc.encode_set(2, Conditions.parse({"rate": "1mbit", "burst": 1000}))
    assert "burst 1000b" in str(e.value) and "1514b" in str(e.value)
    with pytest.raises(ValueError):
        tc.encode_set(2, Conditions())


def _kernel_dump(kind: str, options: bytes, ifindex=3, parent=0xFFFFFFFF) -> bytes:
    """An RTM_NEWQDISC as the kernel dumps it (tcmsg, TCA_KIND, TCA_OPTIONS, stats left out)."""
    def attr(t, p):
        return struct.pack("=HH", 4 + len(p), t) + p + b"\0" * (-(4 + len(p)) & 3)
    body = struct.pack("=BxxxiIII", 0, ifindex, 0x80010000, parent, 1) + attr(1, kind.encode() + b"\0") \
        + attr(2, options)
    return struct.pack("=IHHII", 16 + len(body), 36, 2, 9, 0) + body


def test_decode_netem_as_the_kernel_dumps_it():
    # netem_dump(): qopt, then LATENCY64 and JITTER64 in ns, then RATE
    qopt = struct.pack("=IIIIII", 312_500, 1000, 42_949_673, 0, 0, 78_125)
    opts = qopt + struct.pack("=HHq", 12, 10, 20_000_000) + struct.pack("=HHq", 12, 11, 5_000_000) \
        + struct.pack("=HHIiIi", 20, 6, 12_500_000, 0, 0, 0)
    ifindex, kind, handle, parent, cond = tc.decode_qdisc(_kernel_dump("netem", opts), 0, 16 + 20 + 12 + 4 + len(opts))
    assert (ifindex, kind, handle, parent) == (3, "netem", 0x80010000, 0xFFFFFFFF)
    assert cond == Conditions.parse({"rate": "100mbit", "delay": "20ms", "jitter": "5ms", "loss": "1%", "limit": 1000})
    assert cond.describe() == "rate 100Mbit delay 20ms jitter 5ms loss 1% limit 1000"


@pytest.mark.parametrize("mapping", [
    {"delay": "1.5ms", "jitter": "300us", "loss": "0.5%"}, {"delay": "20ms", "rate": "40gbit", "limit": 20},
    {"loss": "100%"}, {"delay": 7},
])
def test_netem_reads_back_what_was_set(mapping):
    # Without the 64-bit attributes (kernels before 4.17) the ticks alone come back exactly.
    declared = Conditions.parse(mapping)
    assert tc.decode_netem(tc.netem_options(declared)) == tc.effective(declared)


def test_decode_tbf_burst_from_buffer_ticks():
    opts = tc.tbf_options(Conditions.parse({"rate": "50mbit"}))
    # tc.py sends tc's buffer (5242 us in ticks); the kernel dumps its own, 5242880 ns = 81920 ticks
    parms = bytearray(_attrs(opts)[0][1])
    struct.pack_into("=I", parms, 28, 81_920)
    kernel = struct.pack("=HH", 40, 1) + parms
    assert tc.decode_tbf(kernel) == Conditions(rate_bytes=6_250_000, burst=32_768)


# ---- the netem probe: files only -------------------------------------------------------------
@pytest.fixture
def kernel_tree(tmp_path):
    counter = iter(range(1000))

    def make(config=None, builtin=None, dep=None, loaded=False, modules_disabled=None):
        root = tmp_path / str(next(counter))      # a fresh tree per call
        return _tree(root, config, builtin, dep, loaded, modules_disabled)
    return make


def _tree(root, config, builtin, dep, loaded, modules_disabled) -> dict:
    """/sys/module, /lib/modules/RELEASE, config.gz and modules_disabled under `root`."""
    paths = {"sys_module": str(root / "sys"), "lib_modules": str(root / "lib"), "config": str(root / "config.gz"),
             "modules_disabled": str(root / "disabled"), "release": "6.1.0-test"}
    os.makedirs(root / "sys" / ("sch_netem" if loaded else "sch_htb"))
    tree = root / "lib" / "6.1.0-test"
    tree.mkdir(parents=True)
    if config is not None:
        with gzip.open(root / "config.gz", "wt") as f:
            f.write(f"CONFIG_NET_SCH_TBF=y\n{config}\nCONFIG_NET_SCH_DRR=m\n")
    if builtin is not None:
        (tree / "modules.builtin").write_text(builtin)
    if dep is not None:
        (tree / "modules.dep").write_text(dep)
    if modules_disabled is not None:
        (root / "disabled").write_text(modules_disabled)
    return paths


def test_probe_states(kernel_tree):
    assert tc.netem_state(**kernel_tree(loaded=True))[0] == "loaded"
    assert tc.netem_state(**kernel_tree(config="CONFIG_NET_SCH_NETEM=y"))[0] == "loaded"
    assert tc.netem_state(**kernel_tree(builtin="kernel/net/sched/sch_netem.ko\n"))[0] == "loaded"
    assert tc.netem_state(**kernel_tree(config="CONFIG_NET_SCH_NETEM=m"))[0] == "unloaded"
    assert tc.netem_state(**kernel_tree(dep="kernel/net/sched/sch_netem.ko.xz: \n", builtin=""))[0] == "unloaded"
    assert tc.netem_state(**kernel_tree(config="CONFIG_NET_SCH_NETEM=m", modules_disabled="1\n"))[0] == "absent"
    state, why = tc.netem_state(**kernel_tree(config="# CONFIG_NET_SCH_NETEM is not set"))
    assert state == "absent" and "CONFIG_NET_SCH_NETEM is not set" in why
    other = kernel_tree(dep="kernel/net/sched/sch_tbf.ko:\n", builtin="x/sch_netemx.ko\n")
    assert tc.netem_state(**other)[0] == "absent"
    assert tc.netem_state(**kernel_tree())[0] == "unknown"


def test_require_refuses_netem_in_one_sentence(kernel_tree):
    paths = kernel_tree(config="# CONFIG_NET_SCH_NETEM is not set")
    tc.require([Conditions.parse({"rate": "1mbit"}), None], **paths)        # rate alone: fine
    with pytest.raises(tc.KernelFeatureError) as e:
        tc.require([Conditions.parse({"rate": "1mbit"}), Conditions.parse({"loss": "1%"})], **paths)
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg and msg.count(". ") == 0
    assert "no netem" in msg and "CONFIG_NET_SCH_NETEM is not set" in msg and "rate alone works" in msg
    tc.require([Conditions.parse({"loss": "1%"})], **kernel_tree(config="CONFIG_NET_SCH_NETEM=m"))


def test_probe_of_this_machine_matches_its_config():
    # platform facts: this machine's kernel has no netem; a stock kernel has it (VM stage)
    state, _ = tc.netem_state()
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        pytest.skip("no /proc/config.gz")
    if "CONFIG_NET_SCH_NETEM=y" in config:
        assert state == "loaded"
    elif "CONFIG_NET_SCH_NETEM=m" in config:
        assert state in ("loaded", "unloaded")
    else:
        assert state == "absent"


def test_send_batch_matches_acks_by_sequence():
    """A socketpair stands in for the kernel: acks come back out of order, one refused."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        msgs = [(tc.encode_clear(i), f"dev{i}") for i in (2, 3, 4)]

        def answer():
            data = kernel.recv(65536)
            seqs = [struct.unpack_from("=I", data, off + 8)[0] for off in range(0, len(data), 36)]
            reply = b""
            for seq, code in zip(reversed(seqs), (0, -22, 0)):
                reply += struct.pack("=IHHIIi", 36, 2, 0, seq, 0, code) + b"\0" * 16
            kernel.send(reply)
        t = threading.Thread(target=answer)
        t.start()
        failed = tc.send_batch(ours, msgs)
        t.join()
    assert failed == {"dev3": (22, "")}
