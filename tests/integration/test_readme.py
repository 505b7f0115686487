"""The README's console blocks are a test: every `$ [sudo] nslab ...` command in a ```console
block runs on real labs and its output must have the README's shape.

- Lab names: the README uses the default names (spine-leaf, services, ...). Commands run
  through a `nslab` wrapper on PATH that prefixes every lab name (`--name`, `-l`, `down`)
  with this process's test prefix (t<pid>xr: the namespaces follow conftest's root
  snapshot) and adds `-l` where the README leaves it out (the lab of the block's own `up`,
  else the default lab). NSLAB_RUN_DIR is a temporary directory, so a user's labs are
  neither seen nor touched. Output has the prefix removed before comparing.
- One `up` per lab: the README's own `up` commands, in README order; every lab goes down at
  the end and the plugin's leftover check must find nothing.
- Shape: MACs, ephemeral ports, times, PIDs, ids and counters are masked on both sides;
  `...` in a README line matches anything, a `...` line (or `# abridged` on the command)
  lets the README show a subsequence of the real lines. A command with no lines under it
  is checked for its exit code only (0, or `# ... exit N` in its comment).
- Labs across machines: a block with `nslab sandbox up N` runs in stand-in machines of its
  own (sandbox PREFIX + "sb", free ports from 24790: the wrapper adds --name/--port to
  `sandbox up` and `down`), shown under the README's default name `sandbox`; the sandbox is
  removed after the block even when a command failed (and that counts as a failure).
  `export VAR=VALUE` lines set VAR for the rest of their block (NSLAB_ETCD: the test
  sandbox's etcd, whatever port the README shows); `sudo -E nslab` and `etcdctl` lines run
  and are compared like `nslab` lines. Other blocks never see NSLAB_ETCD.
- `<!-- readme-test: skip: REASON -->` on the line before a block skips it (counted);
  `<!-- readme-test: random: REGEX -->` masks what the README says is chosen at random.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import LAB_PREFIX, REPO, TIMEOUT_SCALE, leftovers, nslab
from test_sandbox import free_base         # a sandbox's etcd and agents' ports

README = REPO / "README.md"
PREFIX = LAB_PREFIX + "r"
DEFAULT_LAB = "spine-leaf"
SANDBOX = PREFIX + "sb"                 # a block's stand-in machines (`nslab sandbox up`)


@dataclass
class Command:
    text: str                 # the shell text after `$ ` (continuations joined)
    expected: list[str]       # the lines under it
    line: int                 # README line number


@dataclass
class Block:
    line: int
    commands: list[Command]
    skip: str | None = None
    random: list[str] = field(default_factory=list)

    @property
    def runnable(self) -> list[Command]:
        return [c for c in self.commands
                if re.search(r"(^|[;&|(]\s*|\bdo\s+|sudo\s+(-E\s+)?)(nslab|etcdctl)\s", c.text)]

    @property
    def sandbox(self) -> bool:
        """The block starts stand-in machines (`nslab sandbox up`): its commands run there."""
        return any(re.search(r"\bnslab sandbox up\b", c.text) for c in self.runnable)


def parse_readme(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        block = Block(line=i + 1, commands=[])
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("<!-- readme-test:"):
            m = re.match(r"<!-- readme-test: (skip|random): (.*?) -->", lines[j].strip())
            assert m, f"README.md:{j + 1}: unknown readme-test marker {lines[j]!r}"
            if m.group(1) == "skip":
                block.skip = m.group(2)
            else:
                block.random.append(m.group(2))
            j -= 1
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i]
            if line.startswith("$ "):
                cmd, start = line[2:], i
                while cmd.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd[:-1] + " " + lines[i].strip()
                block.commands.append(Command(cmd, [], start + 1))
            elif block.commands:
                block.commands[-1].expected.append(line)
            i += 1
        blocks.append(block)
        i += 1
    return blocks


# --- masking -------------------------------------------------------------------------------

_MASKS = [
    (re.compile(r"\b[0-9a-f]{2}(:[0-9a-f]{2}){5}\b"), "<MAC>"),
    (re.compile(r"time=[\d.]+ ms"), "time=<T> ms"),
    (re.compile(r"\+[\d.]+ ms"), "+<T> ms"),
    (re.compile(r"took \d+ ms"), "took <T> ms"),
    (re.compile(r"in [\d.]+ s\b"), "in <T> s"),
    (re.compile(r"^#(\d+) [\d.]+ "), r"#\1 <T> "),
    (re.compile(r"\b(id|seq) \d+"), r"\1 <N>"),
    (re.compile(r"\b(id|pid|fd)=\d+"), r"\1=<N>"),
    (re.compile(r"\b(sport|dport)=\d+"), r"\1=<P>"),
    (re.compile(r"(\d+\.\d+\.\d+\.\d+):\d{4,5}\b"), r"\1:<P>"),
    (re.compile(r"\b\d{4,5} > (\d+)\b"), r"<P> > \1"),
    (re.compile(r"\b(\d+) > \d{5}\b"), r"\1 > <P>"),                          # a reply's ephemeral port
    (re.compile(r"^(icmp|tcp|udp)(\s+\d+)\s+\d+"), r"\1\2 <T>"),                 # conntrack timeout
    (re.compile(r"^\s*\d+[KMG]?\s+\d+[KMG]?(?=\s+[A-Za-z])"), "<pkts> <bytes>"),   # iptables -v counters
    (re.compile(r"policy (\w+) \d+ packets, \d+ bytes"), r"policy \1 <N> packets, <N> bytes"),
    # a learned neighbour's state moves with time (REACHABLE turns DELAY while the kernel
    # confirms it); a PERMANENT one (flannel's VTEP entries) is kept as it is
    (re.compile(r"(lladdr \S+) (?:REACHABLE|STALE|DELAY|PROBE)\b"), r"\1 <NUD>"),
]


def mask(line: str, random: list[str]) -> str:
    for rx, rep in _MASKS:
        line = rx.sub(rep, line)
    for rx in random:
        line = re.sub(rx, "<RANDOM>", line)
    return line.rstrip()


def line_regex(expected: str) -> re.Pattern:
    parts = [re.escape(p) for p in re.split(r"\s*\.\.\.\s*", expected.strip())]
    body = r".*".join(parts)
    body = re.sub(r"(\\ )+", r"\\s+", body)
    return re.compile(r"\s*" + body + r"\s*$")


def compare(cmd: Command, actual: list[str], random: list[str]) -> str | None:
    """None if `actual` has the shape of cmd.expected, else what differs."""
    exp = [mask(e, random) for e in cmd.expected]
    act = [mask(a, random) for a in actual if a.strip()]
    abridged = "abridged" in cmd.text or any(e.strip() == "..." for e in exp)
    pats = [(e, line_regex(e)) for e in exp if e.strip() not in ("...", "")]
    if not abridged:
        if len(pats) != len(act):
            return f"{len(act)} lines, README shows {len(pats)}"
        for (e, rx), a in zip(pats, act):
            if not rx.fullmatch(a):
                return f"README line\n    {e}\n  does not match\n    {a}"
        return None
    k = 0
    for e, rx in pats:
        while k < len(act) and not rx.fullmatch(act[k]):
            k += 1
        if k == len(act):
            return f"README line (abridged block)\n    {e}\n  matches no later output line"
        k += 1
    return None


# --- running ---------------------------------------------------------------------------------

WRAPPER = r'''#!{python}
"""nslab for the README test: prefix every lab name, add -l where the README leaves it out."""
import json, os, sys
P, DEFAULT = os.environ["README_PREFIX"], os.environ["README_LAB"]
MAP = json.loads(os.environ["README_MAP"])

def ren(name):
    return MAP.get(name, P + name)
args = sys.argv[1:]
NO_LAB = {{"script", "graph", "validate", "generate", "images", "ls", "machines", "--version", "--help"}}

def stem(path):
    return os.path.basename(path).removesuffix(".yaml")

def rename(opts):
    for i, a in enumerate(args[:-1]):
        if a in opts:
            args[i + 1] = ren(args[i + 1])
            return True
    return False

if args and args[0] in ("up", "test") and (args[0] == "up" or any(not a.startswith("-") for a in args[1:])):
    if not rename(("--name", "-n")):
        files = [a for a in args[1:] if a.endswith(".yaml") or "/" in a]
        name = {{"spine-leaf-services": "services"}}.get(stem(files[0]), stem(files[0])) if files else "spine-leaf"
        args += ["--name", ren(name)]
elif args and args[0] == "down":
    args = ["down"] + [a if a.startswith("-") else ren(a) for a in args[1:]]
elif args and args[0] in ("script", "graph"):
    rename(("--lab", "-l"))
elif args[:2] in (["sandbox", "up"], ["sandbox", "down"]) and "--name" not in args:
    args += ["--name", os.environ["README_SANDBOX"]]      # the test's own machines
    if args[1] == "up":
        args += ["--port", os.environ["README_SANDBOX_PORT"]]
elif args and args[0] not in NO_LAB:
    if not rename(("--lab", "-l")):
        args[1:1] = ["-l", ren(DEFAULT)]
os.execv(sys.executable, [sys.executable, "-m", "nslab.cli", *args])
'''


def _up_lab(cmd: str) -> str | None:
    """The README name of the lab an `up` command brings up (None if not an up)."""
    m = re.search(r"nslab up\b(.*)", cmd)
    if not m:
        return None
    rest = m.group(1).split("#")[0]
    n = re.search(r"(?:--name|-n)\s+(\S+)", rest)
    if n:
        return n.group(1)
    f = re.search(r"(\S+)\.yaml", rest)
    return Path(f.group(1)).name if f else DEFAULT_LAB


def lab_map(blocks: list[Block]) -> dict[str, str]:
    """README lab name -> test lab name. Names of 9+ characters get one of the same length
    (PREFIX + a zero-padded number): trace wraps its lines at 100 columns when piped, and a
    longer name would wrap them elsewhere than the README shows."""
    names = {DEFAULT_LAB}
    for block in blocks:
        for c in block.runnable:
            names.update(filter(None, [_up_lab(c.text)]))
            names.update(re.findall(r"(?:-l|--lab|--name|-n)\s+([\w-]+)", c.text))
            names.update(Path(f).stem for f in re.findall(r"(\S+\.yaml)", c.text))
    fixed = len(PREFIX) + 2
    return {n: PREFIX + str(i).zfill(len(n) - len(PREFIX)) if len(n) >= fixed else PREFIX + n
            for i, n in enumerate(sorted(names))}


@pytest.fixture(scope="module")
def readme_env():
    tmp = Path(tempfile.mkdtemp(prefix="nslab-readme-"))
    run_dir, bin_dir, cwd = tmp / "run", tmp / "bin", tmp / "cwd"
    for d in (run_dir, bin_dir, cwd):
        d.mkdir()
    for d in ("topologies", "tests"):          # the README's relative paths
        (cwd / d).symlink_to(REPO / d)
    (bin_dir / "nslab").write_text(WRAPPER.format(python=sys.executable))
    (bin_dir / "nslab").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NSLAB_RUN_DIR": str(run_dir),
           "README_PREFIX": PREFIX, "PYTHONPATH": str(REPO)}
    env.pop("COLUMNS", None)
    env.pop("NSLAB_ETCD", None)         # a cluster of the caller's: only a sandbox block sets one
    yield env, cwd, run_dir
    problems = []
    for name in sorted(os.listdir(run_dir)):
        if name.startswith(PREFIX):
            proc = nslab("down", name, env={"NSLAB_RUN_DIR": str(run_dir)}, timeout=120)
            if proc.returncode:
                problems.append(f"down {name}: {proc.stderr.strip()}")
    for lab in lab_map(parse_readme(README.read_text())).values():
        problems += leftovers(lab, str(run_dir), [])
    ns_left = [n for n in os.listdir("/run/netns") if n.startswith(PREFIX)] if os.path.isdir("/run/netns") else []
    problems += [f"namespace left: {n}" for n in ns_left]
    shutil.rmtree(tmp, ignore_errors=True)
    assert not problems, "\n".join(problems)


def run_block(block: Block, env: dict, names: dict[str, str], lab: str, cwd) -> list[str]:
    """Run the block's commands in order; what drifted.  `export VAR=VALUE` lines set VAR
    for the rest of the block (NSLAB_ETCD: the test's sandbox's etcd, on its own port)."""
    failures, runnable = [], {id(c) for c in block.runnable}
    for cmd in block.commands:
        exported = re.fullmatch(r"export (\w+)=(\S+)", cmd.text.strip())
        if exported:
            var, value = exported.groups()
            env[var] = f"http://127.0.0.1:{env['README_SANDBOX_PORT']}" \
                if var == "NSLAB_ETCD" and "README_SANDBOX_PORT" in env else value
            continue
        if id(cmd) not in runnable:
            continue
        # sudo in the README: root here already; -E (keep NSLAB_ETCD) likewise
        proc = subprocess.run(["bash", "-c", "sudo() { [ \"$1\" = -E ] && shift; \"$@\"; }\n" + cmd.text],
                              cwd=cwd, text=True, capture_output=True, timeout=120 * TIMEOUT_SCALE,
                              env={**env, "README_LAB": _up_lab(cmd.text) or lab})
        # what the README shows: stdout (conntrack's and ping's chatter on stderr is not), and
        # stderr too for a command that fails
        out = proc.stdout + (proc.stderr if proc.returncode else "")
        for readme_name, name in sorted(names.items(), key=lambda kv: -len(kv[1])):
            out = out.replace(name, readme_name)
        out = out.replace(PREFIX, "")
        want = re.search(r"#.*\bexit (\d+)", cmd.text)
        want_rc = int(want.group(1)) if want else 0
        where = f"README.md:{cmd.line}: $ {cmd.text}"
        if proc.returncode != want_rc:
            failures.append(f"{where}\n  exit {proc.returncode} (README: {want_rc})\n{out}")
            continue
        if cmd.expected:
            diff = compare(cmd, out.splitlines(), block.random)
            if diff:
                failures.append(f"{where}\n  {diff}\n--- output ---\n{out}")
    return failures


def test_readme_console_blocks(readme_env, capsys):
    env, cwd, _ = readme_env
    blocks = parse_readme(README.read_text())
    names = lab_map(blocks)
    env = {**env, "README_MAP": json.dumps(names)}
    checked, skipped, no_cmd, failures = 0, [], 0, []
    for block in blocks:
        if block.skip:
            skipped.append(f"README.md:{block.line}: {block.skip}")
            continue
        if not block.runnable:
            no_cmd += 1
            continue
        checked += 1
        ups = [_up_lab(c.text) for c in block.commands if _up_lab(c.text)]
        lab = ups[0] if ups else DEFAULT_LAB
        block_env, shown = dict(env), dict(names)
        if block.sandbox:                   # its own machines: a name and ports of the test's
            n = int(re.search(r"nslab sandbox up (\d+)", " ".join(c.text for c in block.runnable)).group(1))
            block_env.update(README_SANDBOX=SANDBOX, README_SANDBOX_PORT=str(free_base(n, start=24790)))
            shown["sandbox"] = SANDBOX
        try:
            failures += run_block(block, block_env, shown, lab, cwd)
        finally:
            if block.sandbox and os.path.exists(f"/run/nslab-sandbox/{SANDBOX}/sandbox.json"):
                gone = nslab("sandbox", "down", "--name", SANDBOX, timeout=180)
                failures.append(f"README.md:{block.line}: the block left sandbox {SANDBOX} up"
                                + (f"; down failed: {gone.stderr.strip()}" if gone.returncode else ""))
    with capsys.disabled():
        print(f"\nREADME console blocks: {len(blocks)}; checked {checked}, skipped {len(skipped)}, "
              f"without nslab commands {no_cmd}")
        for s in skipped:
            print("  skipped " + s)
    assert checked >= 10, "the README lost its console blocks?"
    assert not failures, f"{len(failures)} README command(s) drifted:\n\n" + "\n\n".join(failures)


def test_readme_yaml_snippets_match_their_files():
    """A ```yaml block whose first line says `# from topologies/X.yaml` quotes that file:
    each of its lines (comments aside) is a line of the file, and the quoted list is whole
    (the file has no more `- ` items at that indentation in the quoted section)."""
    text = README.read_text()
    quoted = 0
    for m in re.finditer(r"```yaml\n(.*?)```", text, re.S):
        lines = m.group(1).splitlines()
        src = re.search(r"# from (topologies/\S+\.yaml)", lines[0]) if lines else None
        if not src:
            continue
        quoted += 1
        file_lines = [ln.rstrip() for ln in (REPO / src.group(1)).read_text().splitlines()]
        strip = [re.sub(r"\s+#.*$", "", ln).rstrip() for ln in lines]
        for ln in strip:
            assert ln in file_lines, f"README quotes {src.group(1)} with a line it does not have: {ln!r}"
        start = file_lines.index(strip[0])
        section = []
        for ln in file_lines[start + 1:]:
            if ln and not ln.startswith(" "):
                break
            section.append(ln)
        items = [ln for ln in section if ln.startswith("  - ")]
        shown = [ln for ln in strip[1:] if ln.startswith("  - ")]
        assert items == shown, f"README quotes {len(shown)} of {len(items)} items of {strip[0]!r} in {src.group(1)}"
    assert quoted, "no ```yaml block quotes a topology file any more?"
