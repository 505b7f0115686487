"""`nslab cli`: an interactive console for a running lab, as Mininet's CLI is for its network.

    nslab> client ping -c1 web-worker3     a command inside a node (node names in its
                                           arguments become their addresses, as in Mininet)
    nslab> worker1 tcpdump -ni enp0s3 -c2  any command, output as it comes; Ctrl-C stops it
    nslab> pingall                         every pod and host pings every other (a matrix)
    nslab> nodes | links | dump | clear | help | exit

History (up/down arrows; kept in ~/.nslab_history when HOME is ours) and tab completion of commands and node
names come from readline.  Each command runs as `nslab exec` runs it: in the node's network
namespace and under its hostname.  Reads commands from a pipe too (`... | nslab cli`)."""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys

from . import lab as labmod
from .errors import NslabError
from .api import Lab
from .observe import probe
from .observe.checks import pair_endpoints
from . import spawn

COMMANDS = ("nodes", "links", "dump", "pingall", "clear", "help", "exit", "quit")
CLEAR = "\x1b[H\x1b[2J\x1b[3J"      # cursor home, clear the screen and its scrollback (as clear(1))
HISTORY = ".nslab_history"           # in HOME
HISTORY_LENGTH = 1000


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
        """Each node: kind, namespace, addresses (Mininet's `dump`), from the topology as built
        (its namespace name is the lab's rule, LAB.NODE: nothing a record could redirect)."""
        for n in self.topo.nodes.values():
            addrs = ", ".join(f"{i.name}:{i.ip}" for i in n.ifaces if i.ip is not None)
            self.say(f"<{n.kind} {n.name}: {addrs or 'no addresses'} ns={n.ns}>")

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
        enter = [spawn.need("nsenter"), f"--uts={uts}"] if uts else []     # the user's command: their env
        self.out.flush()
        try:
            return subprocess.run([*enter, spawn.need("ip"), "netns", "exec", self.lab.ns(node), *argv],
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


# ---- history: only in a file of ours, in a HOME of ours --------------------------------------
# nslab runs as root; with `sudo -E` or `su` (without -) HOME is a user's, where
# ~/.nslab_history may be a symlink to any file (readline.write_history_file would replace
# the link's target with a root-owned copy).  So: HOME must be a directory of ours that
# nobody else can write to (then nobody can swap the file between our checks and our use),
# and the file is opened without following a symlink and used only if it is a regular file
# of ours with one link.  Otherwise there is no history, silently.

def _history_fd(flags: int) -> int | None:
    home = os.path.expanduser("~")
    try:
        st = os.lstat(home)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        fd = os.open(os.path.join(home, HISTORY), flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        return None
    return fd


def load_history(readline) -> None:
    fd = _history_fd(os.O_RDONLY)
    if fd is None:
        return
    try:
        with open(fd, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[-HISTORY_LENGTH:]
    except OSError:
        return
    for line in lines:
        readline.add_history(line)


def save_history(readline) -> None:
    """The last HISTORY_LENGTH lines, written through our own descriptor (readline's writer
    renames a temporary file onto the path)."""
    fd = _history_fd(os.O_WRONLY | os.O_CREAT)
    if fd is None:
        return
    n = readline.get_current_history_length()
    lines = [readline.get_history_item(i) or "" for i in range(max(1, n - HISTORY_LENGTH + 1), n + 1)]
    try:
        with open(fd, "w", encoding="utf-8", errors="replace") as f:
            f.truncate()
            f.write("".join(line + "\n" for line in lines))
    except OSError:                      # a full disk: the console still ends cleanly
        pass


def run(lab_name: str) -> None:
    lab = Lab.attach(lab_name)
    con = Console(lab)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # lazy: start-up (only an interactive console needs it)
        readline.set_completer(con.complete)
        readline.set_completer_delims(" \t")
        readline.parse_and_bind("tab: complete")
        load_history(readline)
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
            save_history(readline)
