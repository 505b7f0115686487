"""`nslab cli`: an interactive console for a running lab, as Mininet's CLI is for its network.

    nslab> client ping -c1 web-worker3     a command inside a node (node names in its
                                           arguments become their addresses, as in Mininet)
    nslab> worker1 tcpdump -ni enp0s3 -c2  any command, output as it comes; Ctrl-C stops it
    nslab> pingall                         every pod and host pings every other (a matrix)
    nslab> nodes | links | dump | clear | help | exit

History (up/down arrows; kept in ~/.nslab_history) and tab completion of commands and node
names come from readline.  Each command runs as `nslab exec` runs it: in the node's network
namespace and under its hostname.  Reads commands from a pipe too (`... | nslab cli`)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from . import lab as labmod
from . import state
from .errors import NslabError
from .api import Lab
from .observe import probe
from .observe.checks import pair_endpoints

COMMANDS = ("nodes", "links", "dump", "pingall", "clear", "help", "exit", "quit")
CLEAR = "\x1b[H\x1b[2J\x1b[3J"      # cursor home, clear the screen and its scrollback (as clear(1))
HISTORY = os.path.expanduser("~/.nslab_history")


class Console:
    def __init__(self, lab: Lab, out=sys.stdout):
        self.lab, self.out = lab, out
        self.topo = lab.topo

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # ---- commands ------------------------------------------------------------------------
    def nodes(self) -> None:
        by_kind: dict[str, list[str]] = {}
        for n in self.topo.nodes.values():
            by_kind.setdefault(n.kind, []).append(n.name)
        for kind, names in by_kind.items():
            self.say(f"{'switches' if kind == 'switch' else kind + 's'}: {' '.join(names)}")

    def links(self) -> None:
        """Each veth once, both ends (Mininet prints `h1-eth0<->s1-eth1 (OK OK)`)."""
        seen = set()
        for n in self.topo.nodes.values():
            for i in n.ifaces:
                if not i.peer_node or (i.peer_node, i.peer_name) in seen:
                    continue
                seen.add((n.name, i.name))
                self.say(f"{n.name}:{i.name}<->{i.peer_node}:{i.peer_name}")

    def dump(self) -> None:
        """Each node: kind, namespace, addresses (Mininet's `dump`)."""
        st = state.load(self.lab.name)
        for n in self.topo.nodes.values():
            addrs = ", ".join(f"{i.name}:{i.ip}" for i in n.ifaces if i.ip is not None)
            self.say(f"<{n.kind} {n.name}: {addrs or 'no addresses'} ns={st.nodes.get(n.name, n.ns)}>")

    def pingall(self) -> bool:
        eps = pair_endpoints(self.topo, hosts=True)
        r = probe.all_pairs(eps)
        missing = set(r.missing)
        self.say("*** Ping: testing ping reachability")
        for s in eps:
            self.say(f"{s.name} -> " + " ".join("X" if (s.name, d.name) in missing else d.name
                                                for d in eps if d is not s))
        dropped = 100 * len(missing) / r.pairs if r.pairs else 0
        self.say(f"*** Results: {dropped:.0f}% dropped ({r.reachable}/{r.pairs} received)")
        return not missing

    def run_in_node(self, node: str, argv: list[str]) -> int:
        argv = [self._address(a) for a in argv]
        labmod.require_wired(self.lab.name, [node])
        uts = labmod.uts_of(self.lab.name, node)
        enter = ["nsenter", f"--uts={uts}"] if uts else []
        self.out.flush()
        try:
            return subprocess.run([*enter, "ip", "netns", "exec", self.lab.ns(node), *argv],
                                  stdout=None if self.out is sys.stdout else self.out).returncode
        except KeyboardInterrupt:         # Ctrl-C stops the command (the child got it too), not the console
            return 130

    def _address(self, word: str) -> str:
        node = self.topo.nodes.get(word)
        return str(node.addresses[0].ip) if node is not None and node.addresses else word

    # ---- one line ------------------------------------------------------------------------
    def line(self, text: str) -> bool:
        """Run one console line; False when the console should end."""
        try:
            words = shlex.split(text)
        except ValueError as e:
            self.say(f"*** {e}")
            return True
        if not words:
            return True
        head, rest = words[0], words[1:]
        if head in ("exit", "quit"):
            return False
        if head in ("nodes", "links", "dump", "pingall"):
            getattr(self, head)()
        elif head == "clear":
            if self.out.isatty():             # piped, a clear is no output worth writing
                self.out.write(CLEAR)
                self.out.flush()
        elif head == "help":
            self.say(__doc__.split("\n\n")[1])
        elif head in self.topo.nodes:
            if not rest:
                self.say(f"*** {head}: give a command, e.g. `{head} ip addr`")
            else:
                self.run_in_node(head, rest)
        else:
            self.say(f"*** unknown command {head!r}: a node name followed by a command, or one of "
                     f"{', '.join(COMMANDS)}")
        return True

    # ---- completion ----------------------------------------------------------------------
    def complete(self, text: str, state_: int, line: str | None = None) -> str | None:
        """readline completer: commands and node names first, node names in arguments."""
        if line is None:
            import readline  # lazy: start-up
            line = readline.get_line_buffer()
        first = not line[: len(line) - len(text)].strip()
        pool = (list(COMMANDS) if first else []) + list(self.topo.nodes)
        matches = [w for w in pool if w.startswith(text)]
        return matches[state_] if state_ < len(matches) else None


def run(lab_name: str) -> None:
    lab = Lab.attach(lab_name)
    con = Console(lab)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # lazy: start-up (only an interactive console needs it)
        readline.set_completer(con.complete)
        readline.set_completer_delims(" \t")
        readline.parse_and_bind("tab: complete")
        try:
            readline.read_history_file(HISTORY)
        except OSError:
            pass
        con.say(f"lab {lab_name}: {len(lab.topo.nodes)} nodes. `help` lists the commands; Tab completes "
                f"node names; exit or Ctrl-D leaves.")
    prompt = f"nslab:{lab_name}> " if interactive else ""
    try:
        while True:
            try:
                text = input(prompt)
            except EOFError:
                break
            except KeyboardInterrupt:
                con.say()
                continue
            try:
                if not con.line(text):
                    break
            except NslabError as e:             # one sentence, and the console goes on
                con.say(f"*** {e}")
    finally:
        if interactive:
            import readline  # lazy: start-up
            try:
                readline.set_history_length(1000)
                readline.write_history_file(HISTORY)
            except OSError:
                pass
