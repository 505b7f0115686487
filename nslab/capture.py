"""Packet capture inside a node: tcpdump in the node's namespace, decoded with scapy."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

from .errors import NslabError


class Capture:
    """tcpdump -i IFACE inside namespace `ns`, written to a pcap; use as a context manager.

    Starting waits until tcpdump is listening, so packets sent right after are seen.
    """

    def __init__(self, ns: str, iface: str, bpf: str = "", pcap: str | None = None, count: int | None = None,
                 snaplen: int = 262144):
        self.ns, self.iface, self.bpf, self.count = ns, iface, bpf, count
        self._own_file = pcap is None
        if pcap is None:
            fd, pcap = tempfile.mkstemp(prefix="nslab-", suffix=".pcap")
            os.close(fd)
        self.pcap = pcap
        self.snaplen = snaplen
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Capture":
        # --immediate-mode: without it tcpdump holds packets in the kernel ring for up to a
        # second and a prompt stop loses them ("received by filter" but not captured).
        argv = ["ip", "netns", "exec", self.ns, "tcpdump", "-i", self.iface, "-U", "--immediate-mode", "-n", "-s", str(self.snaplen),
                "-Z", "root", "-w", self.pcap]   # -Z root: Debian's tcpdump would drop to a user that cannot write the file
        if self.count:
            argv += ["-c", str(self.count)]
        if self.bpf:
            argv += self.bpf.split()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()      # "tcpdump: listening on IFACE, ..."
        if "listening on" not in line:
            rest = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.proc.kill()
            self.proc.wait()
            raise NslabError(f"tcpdump on {self.ns}:{self.iface} did not start: {(line + rest).strip()}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            time.sleep(0.05)                      # let the last packets reach the file
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def packets(self) -> list:
        import scapy.layers.inet  # noqa: F401  (registers the layers rdpcap decodes into)
        import scapy.layers.l2  # noqa: F401
        import scapy.layers.vxlan  # noqa: F401
        from scapy.utils import rdpcap
        if not os.path.exists(self.pcap) or os.path.getsize(self.pcap) == 0:
            return []
        return list(rdpcap(self.pcap))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.result = self.packets()
        if self._own_file:
            try:
                os.unlink(self.pcap)
            except FileNotFoundError:
                pass
