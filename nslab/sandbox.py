"""`nslab sandbox up N` / `down`: N stand-in machines on one box, for trying labs across
machines and for CI (issue 20, item 8).

Each machine mI is a Docker container of image nslab/machine (apply/images.py), with its
own network, mount, PID and UTS namespaces as a VM would have, nslab itself bind-mounted
read-only from the checkout this process runs (at /opt/nslab) with its Python packages
(at Debian's /usr/local/lib/python3.11/dist-packages).  Two facts of this platform shape
it:
- The engine runs with --bridge=none --iptables=false and nslab leaves the root
  namespace alone, so the underlay is not a Docker network (a bridge and veths in the
  root namespace) but nslab's own: a bridge `br0` in a namespace of its own, NAME.underlay,
  with a veth into each container's network namespace (as container nodes are wired,
  apply/containers.py), addressed from 198.18.0.0/15 (RFC 2544's benchmarking range),
  with no route out.
- --privileged fails here (the bounding set lacks CAP_SYS_RESOURCE): the containers get
  the capabilities nslab needs by name (NET_ADMIN, NET_RAW, SYS_ADMIN for namespaces and
  mounts) and writable /proc/sys (systempaths=unconfined: sysctls of their own namespaces).
etcd (Debian's etcd-server binary) runs in the underlay namespace on 198.18.0.1 only.  The
host reaches it, and each machine's agent port, through forwarders on 127.0.0.1
(runtime/forward.py: listening sockets change none of the root namespace's links, routes or
sysctls): etcd on 127.0.0.1:PORT, mI's agent on 127.0.0.1:PORT+I.

With --tls, etcd as a cluster with TLS client certificates has it (coord.credentials): a
CA and certificates made with openssl in RUN/NAME/tls (root only, keys 0600): etcd's
(SANs 198.18.0.1 and 127.0.0.1: the forwarder passes TLS through), the host's, and each
machine's (SANs its underlay address and 127.0.0.1), bind-mounted read-only at TLS_DIR in
its container.  etcd serves https with --client-cert-auth; the agents' channel is mutual
TLS (channel.py); `up` prints the four export lines.

Ownership, as for a lab: the record (RUN/NAME/sandbox.json) names every container, the
namespace and every process before each is made (a container's ID right after); containers
also carry the label nslab.sandbox=NAME.  `down` removes exactly what the record and that
label name, and processes only by PID verified by start time.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from . import coord, spawn, state
from .apply import containers, netns
from .errors import NslabError, PrerequisiteError, UsageError
from .model.types import LAB_NAME_RE

RUN = "/run/nslab-sandbox"
IMAGE = "nslab/machine:latest"
LABEL = "nslab.sandbox"
ETCD_ADDRESS = "198.18.0.1"             # br0 in the underlay namespace
PREFIX_LEN = 15                         # 198.18.0.0/15

DEFAULT_PORT = 23790
DEFAULT_MTU = 9216                      # a jumbo underlay: a lab's 9150-byte links + 50 of VXLAN fit
MAX_MACHINES = 50
# What nslab needs inside a machine: namespaces and mounts (SYS_ADMIN), links and routes.
CAPS = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "KILL", "SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE", "FOWNER"]
SITE = "/usr/local/lib/python3.11/dist-packages"
CODE = "/opt/nslab"
TLS_DIR = "/etc/nslab/tls"              # a machine's CA, certificate and key (--tls), read-only
CERT_DAYS = 30


BRIDGE_MAC = "02:00:c6:12:00:01"        # locally administered; the underlay bridge's (etcd's side)


def machine_address(i: int) -> str:
    return f"198.18.1.{i}"


@dataclass
class Record:
    name: str
    machines: int
    port: int
    mtu: int
    underlay: str                                   # the underlay namespace's name
    underlay_id: list[int] | None = None            # its [dev, ino] when made (down removes only that)
    containers: list[dict] = field(default_factory=list)      # {"name", "id"}
    processes: list[dict] = field(default_factory=list)       # {"pid", "start_time", "what"}
    tls: bool = False                               # etcd with client certificates, the channel mutual TLS

    @property
    def dir(self) -> str:
        return os.path.join(RUN, self.name)

    def etcd(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def credentials(self) -> coord.Credentials:
        """The host's TLS files for this sandbox (none without --tls)."""
        if not self.tls:
            return coord.Credentials()
        tls = os.path.join(self.dir, "tls")
        return coord.Credentials(os.path.join(tls, "ca.crt"), os.path.join(tls, "host.crt"),
                                 os.path.join(tls, "host.key"))


def _path(name: str) -> str:
    return os.path.join(RUN, name, "sandbox.json")


def _save(rec: Record) -> None:
    tmp = _path(rec.name) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(rec), f, indent=1)
    os.replace(tmp, _path(rec.name))


def check_name(name: str) -> None:
    if not isinstance(name, str) or not LAB_NAME_RE.fullmatch(name) or len(name) > 20:
        raise UsageError(f"--name {name!r}: a sandbox name is lower-case letters, digits, - and _ "
                         f"(at most 20 characters)")


def load(name: str) -> Record | None:
    """The sandbox's record, checked as input: every name it holds is the sandbox's own."""
    check_name(name)
    try:
        with open(_path(name)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise NslabError(f"{_path(name)}: not a sandbox record ({e})") from None
    try:
        rec = Record(**data)
        ok = rec.name == name and rec.underlay == f"{name}.underlay" \
            and all(isinstance(c, dict) and isinstance(c.get("name"), str)
                    and re.fullmatch(rf"{re.escape(name)}\.m\d+", c["name"])
                    and (c.get("id") is None or re.fullmatch(r"[0-9a-f]{64}", str(c["id"])))
                    for c in rec.containers) \
            and all(isinstance(p, dict) and all(isinstance(p.get(k), int) for k in ("pid", "start_time"))
                    and p["pid"] > 1 for p in rec.processes) \
            and (rec.underlay_id is None or isinstance(rec.underlay_id, list) and len(rec.underlay_id) == 2
                 and all(type(i) is int for i in rec.underlay_id)) \
            and type(rec.tls) is bool
    except TypeError:
        ok = False
    if not ok:
        raise NslabError(f"{_path(name)}: not a sandbox record nslab wrote; nothing was removed")
    return rec


def names() -> list[str]:
    try:
        return sorted(n for n in os.listdir(RUN) if os.path.exists(_path(n)))
    except FileNotFoundError:
        return []


def _ip(*args: str, ns: str | None = None) -> None:
    argv = [spawn.need("ip")] + (["-n", ns] if ns else []) + list(args)
    proc = subprocess.run(argv, cwd=spawn.CWD, env=spawn.env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise NslabError(f"`{' '.join(argv[1:])}` failed: {proc.stderr.strip()}")


def _in_container(pid: int, *args: str) -> None:
    argv = [spawn.need("nsenter"), "-t", str(pid), "-n", spawn.need("ip"), *args]
    proc = subprocess.run(argv, cwd=spawn.CWD, env=spawn.env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise NslabError(f"`ip {' '.join(args)}` in machine PID {pid} failed: {proc.stderr.strip()}")


def _start(rec: Record, argv: list[str], what: str) -> None:
    """Start a process of the sandbox (its own session: it outlives this command) and
    record it at once."""
    log = open(os.path.join(rec.dir, f"{what}.log"), "ab")
    with log:
        proc = subprocess.Popen(argv, cwd=spawn.CWD, env=spawn.env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rec.processes.append({"pid": proc.pid, "start_time": state.process_start_time(proc.pid) or 0, "what": what})
    _save(rec)


DEBIAN_SITES = ("/usr/local/lib/python3.11/dist-packages", "/usr/lib/python3/dist-packages")


def _site_packages() -> dict[str, str]:
    """host folder -> where a machine sees it: where this Python's packages are (PyYAML's
    folder names it) and Debian's two package folders, each at its own path in the machine
    (Debian 12's Python 3.11 looks there; pip install as root writes the first, apt the
    second); a folder elsewhere (a pyenv's) at the first.  Only a 3.11 here fits."""
    import yaml                       # lazy: any of nslab's dependencies names the folder
    if sys.version_info[:2] != (3, 11):
        raise PrerequisiteError(f"the sandbox's machines run Python 3.11 (Debian 12) and take nslab's packages "
                                f"from this Python, which is {sys.version_info[0]}.{sys.version_info[1]}")
    site = os.path.dirname(os.path.dirname(os.path.abspath(yaml.__file__)))
    mounts = {site: site if site in DEBIAN_SITES else SITE}
    for d in DEBIAN_SITES:
        if os.path.isdir(d) and d not in mounts and d not in mounts.values():
            mounts[d] = d
    return mounts


def _port_free(port: int) -> bool:
    """Free for the forwarders, which bind with SO_REUSEADDR (runtime/forward.py): without it
    here, a port whose connections of a sandbox just removed sit in TIME_WAIT reads as taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _openssl(*args: str) -> None:
    proc = subprocess.run([spawn.need("openssl"), *args], cwd=spawn.CWD, env=spawn.env(), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise NslabError(f"`openssl {args[0]}` failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")


def _certificate(tls: str, ca: str, name: str, cn: str, ips: list[str]) -> None:
    """NAME.crt and NAME.key in `tls`: a P-256 key and a certificate from CA for both a
    server and a client (etcd's gateway dials etcd with etcd's own certificate), for `ips`."""
    key, csr, crt, ext = (os.path.join(tls, f"{name}.{x}") for x in ("key", "csr", "crt", "ext"))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
    os.chmod(key, 0o600)
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                f"subjectAltName={','.join(f'IP:{ip}' for ip in ips)}\n")
    _openssl("x509", "-req", "-in", csr, "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-set_serial", f"0x{os.urandom(16).hex()}", "-days", str(CERT_DAYS), "-out", crt, "-extfile", ext)
    os.remove(csr)
    os.remove(ext)


def certificates(rec: Record) -> None:
    """The sandbox's CA and certificates in RUN/NAME/tls (see the module's text): etcd's,
    the host's, and mI/{ca.crt,cert.pem,key.pem} for each machine."""
    tls = os.path.join(rec.dir, "tls")
    os.makedirs(tls, mode=0o700)
    ca = os.path.join(tls, "ca")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", str(CERT_DAYS),
             "-subj", f"/CN=nslab sandbox {rec.name} CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(f"{ca}.key", 0o600)
    _certificate(tls, ca, "etcd", "etcd", [ETCD_ADDRESS, "127.0.0.1"])
    _certificate(tls, ca, "host", "nslab-host", ["127.0.0.1"])
    for i in range(1, rec.machines + 1):
        _certificate(tls, ca, f"m{i}", f"m{i}", [machine_address(i), "127.0.0.1"])
        mine = os.path.join(tls, f"m{i}")
        os.makedirs(mine, mode=0o700)
        shutil.copyfile(f"{ca}.crt", os.path.join(mine, "ca.crt"))
        os.replace(os.path.join(tls, f"m{i}.crt"), os.path.join(mine, "cert.pem"))
        os.replace(os.path.join(tls, f"m{i}.key"), os.path.join(mine, "key.pem"))


def up(name: str, n: int, port: int = DEFAULT_PORT, mtu: int = DEFAULT_MTU, log=print,
       timeout: float = 60.0, tls: bool = False) -> Record:
    """Start the sandbox; its record.  On any failure everything made so far is removed."""
    check_name(name)
    if not 1 <= n <= MAX_MACHINES:
        raise UsageError(f"sandbox up {n}: between 1 and {MAX_MACHINES} machines")
    if not (1024 <= port and port + n <= 65535):
        raise UsageError(f"--port {port}: ports {port} to {port + n} must lie within 1024..65535")
    if not 1280 <= mtu <= 65000:
        raise UsageError(f"--mtu {mtu}: between 1280 and 65000")
    if load(name) is not None:
        raise UsageError(f"sandbox {name} is up already: `nslab sandbox down --name {name}` first")
    etcd_bin, sites = spawn.need("etcd"), _site_packages()
    spawn.need("nsenter")
    if tls:
        spawn.need("openssl")
    client = containers.engine()
    import docker                      # lazy: start-up
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        raise PrerequisiteError(f"image {IMAGE} missing: run `nslab images build nslab/machine`") from None
    taken = [p for p in range(port, port + n + 1) if not _port_free(p)]
    if taken:
        raise UsageError(f"--port {port}: 127.0.0.1:{taken[0]} is taken (the sandbox needs {port} to {port + n})")
    underlay = f"{name}.underlay"
    if netns.exists(underlay):
        raise NslabError(f"a namespace {underlay} exists and no sandbox record names it: remove it "
                         f"(ip netns del {underlay}) or pick another --name")
    rec = Record(name, n, port, mtu, underlay,
                 containers=[{"name": f"{name}.m{i}", "id": None} for i in range(1, n + 1)], tls=tls)
    os.makedirs(RUN, mode=0o755, exist_ok=True)
    os.makedirs(rec.dir, mode=0o700)
    _save(rec)
    try:
        if tls:
            certificates(rec)
        fd, _ = netns.create(underlay)
        made = os.fstat(fd)             # the namespace this call made, not whatever the name holds later
        os.close(fd)
        rec.underlay_id = [made.st_dev, made.st_ino]
        _save(rec)
        _ip("link", "set", "lo", "up", ns=underlay)
        # a MAC of its own: a bridge without one takes its lowest port's, and changes it when
        # that machine goes (docker kill) -- the machines' ARP entries for etcd's address
        # then point nowhere until they go stale (measured: every lease lost ~10 s later)
        _ip("link", "add", "br0", "address", BRIDGE_MAC, "mtu", str(mtu), "type", "bridge", ns=underlay)
        _ip("addr", "add", f"{ETCD_ADDRESS}/{PREFIX_LEN}", "dev", "br0", ns=underlay)
        _ip("link", "set", "br0", "up", ns=underlay)
        data = os.path.join(rec.dir, "etcd")
        url = f"{'https' if tls else 'http'}://{ETCD_ADDRESS}:2379"
        secure = []
        if tls:                     # etcd's client port: TLS, a client certificate from the CA required
            d = os.path.join(rec.dir, "tls")
            secure = ["--cert-file", os.path.join(d, "etcd.crt"), "--key-file", os.path.join(d, "etcd.key"),
                      "--client-cert-auth", "--trusted-ca-file", os.path.join(d, "ca.crt")]
        _start(rec, [spawn.need("ip"), "netns", "exec", underlay, etcd_bin, "--name", "sandbox", *secure,
                     "--data-dir", data, "--listen-client-urls", url, "--advertise-client-urls", url,
                     "--listen-peer-urls", f"http://{ETCD_ADDRESS}:2380",
                     "--initial-advertise-peer-urls", f"http://{ETCD_ADDRESS}:2380",
                     "--initial-cluster", f"sandbox=http://{ETCD_ADDRESS}:2380"], "etcd")
        for i in range(1, n + 1):
            _machine(client, rec, i, sites)
            log(f"m{i}: container {name}.m{i}, underlay {machine_address(i)}")
        pairs = [f"{port}={ETCD_ADDRESS}:2379"] + [f"{port + i}={machine_address(i)}:{coord.AGENT_PORT}"
                                                    for i in range(1, n + 1)]
        _start(rec, spawn.python("nslab.runtime.forward", netns.path(underlay), rec.dir, *pairs), "forward")
        _wait_etcd(rec, timeout)
        for i in range(1, n + 1):
            _start_agent(client, rec, i)
        _wait_agents(rec, timeout)
    except BaseException:
        down(name)
        raise
    return rec


def _machine(client, rec: Record, i: int, sites: dict[str, str]) -> None:
    import docker                      # lazy: start-up
    name = f"{rec.name}.m{i}"
    try:
        c = client.containers.create(
            IMAGE, command=["sleep", "infinity"], name=name, hostname=f"m{i}", network_mode="none",
            cap_add=CAPS, security_opt=["apparmor=unconfined"],
            labels={LABEL: rec.name}, environment={"PYTHONPATH": CODE, "NSLAB_MACHINE": f"m{i}"},
            volumes={spawn.ROOT: {"bind": CODE, "mode": "ro"},
                     **{host: {"bind": there, "mode": "ro"} for host, there in sites.items()},
                     **({os.path.join(rec.dir, "tls", f"m{i}"): {"bind": TLS_DIR, "mode": "ro"}} if rec.tls else {})},
            devices=["/dev/net/tun:/dev/net/tun:rwm"],       # flannel udp's and ipip's TUN devices
            tmpfs={"/run": "exec"}, init=True, detach=True)
    except docker.errors.APIError as e:
        if e.status_code == 409:
            raise NslabError(f"a container named {name} exists and no sandbox record names it: remove it "
                             f"(docker rm -f {name}) or pick another --name") from None
        raise
    rec.containers[i - 1]["id"] = c.id
    _save(rec)
    _wire(rec, i, containers.run(c))


def _wire(rec: Record, i: int, pid: int) -> None:
    """mI's eth0: a veth from the underlay bridge into its network namespace, addressed."""
    veth = f"m{i}"
    _ip("link", "add", veth, "mtu", str(rec.mtu), "type", "veth", "peer", "name", "eth0", "mtu", str(rec.mtu),
        "netns", str(pid), ns=rec.underlay)
    _ip("link", "set", veth, "master", "br0", "up", ns=rec.underlay)
    _in_container(pid, "link", "set", "lo", "up")
    _in_container(pid, "addr", "add", f"{machine_address(i)}/{PREFIX_LEN}", "dev", "eth0")
    _in_container(pid, "link", "set", "eth0", "up")


def restart_machine(name: str, machine: str, timeout: float = 60.0) -> None:
    """A machine killed (`docker kill`, a power cut) started again, as a VM boots: the same
    container started, wired into the underlay again (its network namespace is new), and
    its agent started as `up` starts it.  Its shards come back from etcd (the agent)."""
    rec = load(name)
    if rec is None:
        raise UsageError(f"no sandbox named {name}")
    i = int(machine[1:]) if machine[:1] == "m" and machine[1:].isdigit() else 0
    if not 1 <= i <= rec.machines:
        raise UsageError(f"sandbox {name} has machines m1 to m{rec.machines}, not {machine}")
    client = containers.engine()
    c = client.containers.get(rec.containers[i - 1]["id"])
    c.reload()
    if c.attrs["State"]["Running"]:
        raise UsageError(f"machine {machine} of sandbox {name} is running")
    _wire(rec, i, containers.run(c))
    _start_agent(client, rec, i)
    _wait_agents(rec, timeout)


def _start_agent(client, rec: Record, i: int) -> None:
    """mI's agent, kept running inside the machine as a service manager would (a loop that
    starts it again a second after it ends: kill -9 of the agent is a fault case)."""
    tls = (f" --etcd-ca {TLS_DIR}/ca.crt --etcd-cert {TLS_DIR}/cert.pem --etcd-key {TLS_DIR}/key.pem"
           if rec.tls else "")
    loop = (f"while :; do python3 -u -m nslab agent --etcd {'https' if rec.tls else 'http'}://{ETCD_ADDRESS}:2379"
            f"{tls} --machine m{i} --underlay eth0 >>/run/nslab-agent.log 2>&1; sleep 1; done")
    client.containers.get(rec.containers[i - 1]["id"]).exec_run(["sh", "-c", loop], detach=True)


def _wait_agents(rec: Record, timeout: float) -> None:
    creds = rec.credentials()
    etcd = coord.Etcd(rec.etcd(), coord.TIMEOUT, creds.ca, creds.cert, creds.key)
    deadline = time.monotonic() + timeout
    want = {f"m{i}" for i in range(1, rec.machines + 1)}
    while True:
        have = {m.name for m in coord.machines(etcd)[0]}
        if want <= have:
            return
        if time.monotonic() > deadline:
            missing = sorted(want - have)
            raise NslabError(f"the agent of {missing[0]} did not register within {timeout:g} s; see "
                             f"`docker exec {rec.name}.{missing[0]} cat /run/nslab-agent.log`")
        time.sleep(0.2)


def _wait_etcd(rec: Record, timeout: float) -> None:
    creds = rec.credentials()
    etcd = coord.Etcd(rec.etcd(), 2, creds.ca, creds.cert, creds.key)
    deadline = time.monotonic() + timeout
    while True:
        try:
            etcd.get("/")
            return
        except coord.EtcdError as e:
            dead = [p["what"] for p in rec.processes
                    if not state.is_ours(state.Process(p["pid"], p["start_time"], p["what"]))]
            if dead or time.monotonic() > deadline:
                what = dead[0] if dead else "etcd"
                try:
                    with open(os.path.join(rec.dir, f"{what}.log"), errors="replace") as f:
                        tail = (f.read().strip().splitlines() or ["(no output)"])[-1]
                except OSError:
                    tail = "(no log)"
                raise NslabError(f"the sandbox's {what} did not come up ({e}); its log ends: {tail[:300]}") from None
            time.sleep(0.2)


def down(name: str) -> list[str]:
    """Remove what the sandbox's record and label name; what was removed (and a namespace
    left because it is not the one the sandbox made), as lines."""
    rec = load(name)
    if rec is None:
        raise UsageError(f"no sandbox {name} (`nslab sandbox ls`)")
    done = []
    procs = [state.Process(p["pid"], p["start_time"], p["what"]) for p in rec.processes]
    state.stop_processes(procs)
    done += [f"removed process {p.what} (PID {p.pid})" for p in procs]
    import docker                      # lazy: start-up
    client = containers.engine()
    found = {}
    for c in rec.containers:
        try:
            got = client.containers.get(c["id"] or c["name"])
        except docker.errors.NotFound:
            continue
        if got.labels.get(LABEL) == name:
            found[got.id] = got
    for got in client.containers.list(all=True, filters={"label": f"{LABEL}={name}"}):
        found[got.id] = got
    containers.remove(list(found.values()))
    done += [f"removed container {c.name}" for c in found.values()]
    # only the namespace this sandbox made (its recorded identity), as verified_ids for labs
    if rec.underlay_id is not None and state.witnessed(rec.underlay, rec.underlay_id):
        if netns.remove(rec.underlay):
            done.append(f"removed namespace {rec.underlay}")
    elif netns.exists(rec.underlay):
        done.append(f"left namespace {rec.underlay}: not the one this sandbox made (its identity is not "
                    f"the recorded one); if it is yours: ip netns del {rec.underlay}")
    shutil.rmtree(rec.dir)
    return done


def export_line(rec: Record) -> str:
    """The lines to paste: NSLAB_ETCD, and with --tls the three TLS files' variables."""
    lines = [f"export NSLAB_ETCD={rec.etcd()}"]
    creds = rec.credentials()
    lines += [f"export {var}={getattr(creds, f)}" for f, _, var in coord.TLS_FILES if getattr(creds, f)]
    return "\n".join(lines)


def agent_urls(endpoint: str) -> dict[str, str]:
    """machine -> the URL its agent answers on from this host, for the sandbox whose etcd
    is `endpoint` (its forwarders on 127.0.0.1); {} if no sandbox here has that etcd."""
    for name in names():
        try:
            rec = load(name)
        except NslabError:
            continue
        if rec is not None and rec.etcd() == endpoint.rstrip("/"):
            scheme = "https" if rec.tls else "http"         # the channel: mutual TLS with --tls
            return {f"m{i}": f"{scheme}://127.0.0.1:{rec.port + i}" for i in range(1, rec.machines + 1)}
    return {}
