"""Coordination through etcd v3 (issue 20, item 1): the one module that talks to etcd.

What machines must agree on lives in etcd, nothing a machine can derive: which machines
are up (each under a lease its agent keeps alive), who holds a lab's name, the VNIs of the
stitches between machines, and flannel's own network config and subnet leases, under
flannel's keys and in flannel's JSON.  No consensus, membership or election of our own:
leases, transactions and watches are etcd's.

The client: etcd's v3 JSON gateway (grpc-gateway: POST /v3/kv/range, /v3/kv/txn,
/v3/lease/grant, /v3/watch ...), served by every etcd v3 on its client port, over
http.client from the standard library.  The Python clients were weighed: python-etcd3 has
had no release since 2020 and its generated protobuf modules fail to import with protobuf
4+ ("Descriptors cannot be created directly"), pinning the whole project to protobuf 3;
etcd3gw speaks this same gateway but pulls in futurist, pbr and requests for what is a few
JSON calls here.  The gateway is stable across etcd 3.4 (Debian 12's etcd-server) to 3.6.

Everything read from etcd is input: a hostile writer of the store must not steer nslab.
Keys and values are decoded strictly (base64, UTF-8, JSON of bounded size), then checked
for what they become (a machine name, an IPv4 address, a network, a MAC, a VNI); what
fails is refused with a sentence naming the key, never used.

Failure to reach etcd: one sentence naming the endpoint (`EtcdUnreachable`), within
TIMEOUT seconds (4.5): a command says so within 5 s.

Key layout (PREFIX = /nslab):
    /nslab/machines/NAME        {"name", "address", "underlay_mtu"}   under the agent's lease
    /nslab/labs/LAB             {"lab", "machine"}                    claimed by a transaction
    /nslab/vnis/VNI             "LAB/STITCH"                          one per stitch, transactions
    /nslab/shards/MACHINE/LAB   a shard spec (the host writes it, the machine's agent builds it)
    /nslab/texts/LAB/NNNN       a big lab's text, zlib-compressed, in parts (put_shards)
    /nslab/status/LAB/MACHINE   {"state", "namespaces", "error"}      under the agent's lease
    /nslab/pending/MACHINE/LAB  {"lab"}: `down` ran while MACHINE was gone; its agent finishes it
    /coreos.com/network/config  flannel's net-conf.json
    /coreos.com/network/subnets/10.244.1.0-24
                                {"PublicIP", "PublicIPv6", "BackendType", "BackendData"}
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from urllib.parse import urlsplit

from . import backends
from .errors import NslabError, UsageError, one_line
from .model.placement import machine_problem
from .model.yamldoc import MAX_FILE_BYTES
from .model.types import LAB_NAME_RE, MAX_LAB_NAME

TIMEOUT = 4.5                   # seconds: connect and each answer (a watch waits as long as asked)
MAX_VALUE = 1 << 20             # bytes of one value nslab accepts back (etcd's own default limit is 1.5 MiB)
MAX_ANSWER = 64 << 20           # bytes of one answer (a range over many keys)
PREFIX = "/nslab"
FLANNEL_PREFIX = "/coreos.com/network"      # flanneld's --etcd-prefix default
MAX_TXN_OPS = 128               # etcd's --max-txn-ops default: operations per transaction
MAX_VNI = (1 << 24) - 1
SUBNET_KEY_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})")     # flannel's MakeSubnetKey, IPv4 only
MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


class EtcdError(NslabError):
    """etcd answered, but not as nslab needs (a refusal, or data that is not valid).  The
    sentence quotes what etcd sent: it is made one line (errors.one_line)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class EtcdUnreachable(EtcdError):
    """No answer from the endpoint."""


class Claimed(EtcdError):
    """A name someone else holds (a machine, a lab)."""

    exit_code = 2


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    lease: int
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Event:
    type: str                   # PUT | DELETE
    kv: KV


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def prefix_end(prefix: str) -> str:
    """The range_end that makes [prefix, end) every key under prefix (clientv3.GetPrefixRangeEnd)."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return _b64(bytes(raw[: i + 1]))
    return _b64(b"\0")


def _int(value, what: str) -> int:
    """A proto3 int64 as the gateway writes it (a decimal string; absent = 0)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and re.fullmatch(r"-?\d{1,20}", value):
        return int(value)
    raise EtcdError(f"etcd sent {what} {value!r}, not a number")


def _kv(item) -> KV:
    if not isinstance(item, dict):
        raise EtcdError(f"etcd sent a key-value that is not an object: {item!r:.80}")
    try:
        key = base64.b64decode(item.get("key", ""), validate=True).decode("utf-8")
        value = base64.b64decode(item.get("value", ""), validate=True)
    except (ValueError, TypeError):
        raise EtcdError(f"etcd sent a key or value that is not base64 UTF-8: {item.get('key')!r:.80}") from None
    if len(value) > MAX_VALUE:
        raise EtcdError(f"etcd key {key!r:.200}: a value of {len(value):,} bytes (nslab reads at most {MAX_VALUE:,})")
    return KV(key, value, _int(item.get("lease"), "a lease"), _int(item.get("mod_revision"), "a revision"),
              _int(item.get("create_revision"), "a revision"))


def json_value(kv: KV) -> object:
    try:
        return json.loads(kv.value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EtcdError(f"etcd key {kv.key!r:.200} does not hold JSON") from None


# The cluster's TLS files (etcd with client certificates; the agents' channel over mutual
# TLS, channel.py): each named by its option, else its environment variable.
TLS_FILES = (("ca", "--etcd-ca", "NSLAB_ETCD_CA"), ("cert", "--etcd-cert", "NSLAB_ETCD_CERT"),
             ("key", "--etcd-key", "NSLAB_ETCD_KEY"))


@dataclass(frozen=True)
class Credentials:
    """The cluster's CA and this side's certificate and key (paths; None: not given).
    With a CA and a certificate, the agents' channel is mutual TLS (channel.py)."""
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def mutual(self) -> bool:
        return bool(self.ca and self.cert)

    def client_context(self) -> ssl.SSLContext:
        """A client's context: the server's certificate checked against the CA (its SAN
        against the address dialled), this side's certificate offered."""
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context

    def server_context(self) -> ssl.SSLContext:
        """A server's context (an agent's channel): its certificate, and a client
        certificate from the cluster's CA required."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(cafile=self.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def credentials(ca: str | None = None, cert: str | None = None, key: str | None = None) -> Credentials:
    """The TLS files given as options, else in $NSLAB_ETCD_CA/_CERT/_KEY, each checked: a
    file missing, unreadable or not PEM is one sentence naming its option (exit 2)."""
    given = {"ca": ca, "cert": cert, "key": key}
    found, names = {}, {}
    for field_, option, var in TLS_FILES:
        path, named = given[field_], option
        if not path:
            path, named = os.environ.get(var) or None, f"${var}"
        names[field_] = named
        if path is None:
            found[field_] = None
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError as e:
            raise UsageError(f"{named} {path}: {(e.strerror or str(e)).lower()}") from None
        if b"-----BEGIN " not in head:
            raise UsageError(f"{named} {path}: not a PEM file")
        found[field_] = os.path.abspath(path)
    creds = Credentials(**found)
    if creds.key and not creds.cert:
        raise UsageError(f"{names['key']} without a certificate: give --etcd-cert (or $NSLAB_ETCD_CERT) too")
    try:
        if creds.cert:
            ssl.create_default_context().load_cert_chain(creds.cert, creds.key)
    except ssl.SSLError as e:
        raise UsageError(f"{names['cert']} {creds.cert}: not a certificate and key that match "
                         f"({str(e.reason or e).replace('_', ' ').lower()})") from None
    try:
        if creds.ca:
            ssl.create_default_context(cafile=creds.ca)
    except ssl.SSLError as e:
        raise UsageError(f"{names['ca']} {creds.ca}: not a CA certificate "
                         f"({str(e.reason or e).replace('_', ' ').lower()})") from None
    return creds


def connect(endpoint: str, ca: str | None = None, cert: str | None = None, key: str | None = None,
            timeout: float = TIMEOUT) -> "Etcd":
    """The Etcd every command and the agent use: `endpoint` with the TLS files given, else
    those in the environment (credentials).  TLS files for a plain http:// endpoint: refused."""
    creds = credentials(ca, cert, key)
    if (creds.ca or creds.cert) and not str(endpoint).startswith("https://"):
        raise UsageError(f"etcd endpoint {endpoint!r} is plain HTTP but TLS files are given "
                         f"(--etcd-ca/--etcd-cert or $NSLAB_ETCD_CA/_CERT): use https://HOST:PORT")
    return Etcd(endpoint, timeout, creds.ca, creds.cert, creds.key)


class Etcd:
    """One etcd v3 cluster, through its JSON gateway.  endpoint: http://HOST:PORT or
    https://HOST:PORT (then `ca`, and `cert`/`key` for a client certificate).  Build it
    with connect(), which takes the files from the options or the environment."""

    def __init__(self, endpoint: str, timeout: float = TIMEOUT, ca: str | None = None, cert: str | None = None,
                 key: str | None = None):
        url = urlsplit(str(endpoint))
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme not in ("http", "https") or not url.hostname or port is None or url.path not in ("", "/") \
                or url.query or url.username:
            raise UsageError(f"etcd endpoint {endpoint!r}: expected http://HOST:PORT or https://HOST:PORT")
        self.endpoint = f"{url.scheme}://{url.netloc}"
        self.host, self.port, self.timeout = url.hostname, port, timeout
        self.context = None
        self.credentials = Credentials(ca, cert, key) if url.scheme == "https" else Credentials()
        if url.scheme == "https":
            self.context = self.credentials.client_context()

    # ---- the gateway ------------------------------------------------------------------------
    def _connect(self, timeout: float | None):
        if self.context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _unreachable(self, e: Exception) -> EtcdUnreachable:
        if isinstance(e, ssl.SSLError):     # TLS: which side refused, and why
            reason = str(e.reason or e).replace("_", " ").lower()
            ca = self.credentials.ca
            if isinstance(e, ssl.SSLCertVerificationError):
                return EtcdUnreachable(f"etcd at {self.endpoint} shows a certificate not from "
                                       f"{'the CA in ' + ca if ca else 'a CA this system trusts (give --etcd-ca)'}"
                                       f" ({e.verify_message or reason})")
            if not self.credentials.cert:
                return EtcdUnreachable(f"etcd at {self.endpoint} refused the TLS connection: it wants a client "
                                       f"certificate (--etcd-cert/--etcd-key or $NSLAB_ETCD_CERT/_KEY)")
            return EtcdUnreachable(f"etcd at {self.endpoint} refused the client certificate "
                                   f"{self.credentials.cert} ({reason}): is it from etcd's CA?")
        if self.context is None and isinstance(e, http.client.RemoteDisconnected):
            return EtcdUnreachable(f"etcd at {self.endpoint} closed the connection without an answer (if it "
                                   f"serves HTTPS: https://{self.host}:{self.port} with --etcd-ca/--etcd-cert)")
        why = "no answer within {:g} s".format(self.timeout) if isinstance(e, (socket.timeout, TimeoutError)) \
            else (getattr(e, "strerror", None) or str(e) or type(e).__name__).lower()
        return EtcdUnreachable(f"etcd at {self.endpoint} does not answer ({why})")

    def call(self, path: str, body: dict) -> dict:
        """POST one gateway call; its JSON answer (an error answer raises EtcdError)."""
        conn = self._connect(self.timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        finally:
            conn.close()
        if len(data) > MAX_ANSWER:
            raise EtcdError(f"etcd at {self.endpoint} sent more than {MAX_ANSWER:,} bytes for {path}")
        try:
            answer = json.loads(data)
        except ValueError:
            raise EtcdError(f"etcd at {self.endpoint} answered {path} with HTTP {resp.status} and no JSON "
                            f"(is it etcd v3?)") from None
        if not isinstance(answer, dict):
            raise EtcdError(f"etcd at {self.endpoint} answered {path} with {type(answer).__name__}, not an object")
        if resp.status != 200 or "error" in answer:
            message = answer.get("message") or answer.get("error") or f"HTTP {resp.status}"
            raise EtcdError(f"etcd at {self.endpoint} refused {path}: {str(message)[:300]}")
        return answer

    # ---- keys ---------------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under prefix, and the store's revision they were read at (to watch from)."""
        answer = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)})
        kvs = answer.get("kvs") or []
        if not isinstance(kvs, list):
            raise EtcdError(f"etcd sent kvs that are not a list under {prefix!r}")
        return [_kv(x) for x in kvs], _int((answer.get("header") or {}).get("revision"), "a revision")

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        """Write key; the revision it was written at."""
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _int(self.call("/v3/kv/put", body).get("header", {}).get("revision"), "a revision")

    def delete(self, key: str, prefix: bool = False) -> int:
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        return _int(self.call("/v3/kv/deleterange", body).get("deleted"), "a count")

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] = ()) -> tuple[bool, list]:
        """One transaction (etcd's If/Then/Else); (succeeded, the responses of the branch taken)."""
        answer = self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": list(failure)})
        return answer.get("succeeded") is True, answer.get("responses") or []

    @staticmethod
    def absent(key: str) -> dict:
        """A compare: key does not exist (flannel's createSubnet: Version(key) = 0)."""
        return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}

    @staticmethod
    def op_put(key: str, value: str | bytes, lease: int = 0) -> dict:
        req = {"key": _b64(key), "value": _b64(value)}
        if lease:
            req["lease"] = str(lease)
        return {"request_put": req}

    @staticmethod
    def op_get(key: str) -> dict:
        return {"request_range": {"key": _b64(key)}}

    @staticmethod
    def op_delete(key: str) -> dict:
        return {"request_delete_range": {"key": _b64(key)}}

    # ---- leases ---------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; its ID."""
        if not isinstance(ttl, int) or not 1 <= ttl <= 86400:
            raise UsageError(f"a lease TTL is 1 to 86,400 seconds, not {ttl!r}")
        lease = _int(self.call("/v3/lease/grant", {"TTL": str(ttl)}).get("ID"), "a lease")
        if lease <= 0:
            raise EtcdError(f"etcd at {self.endpoint} granted no lease")
        return lease

    def keepalive(self, lease: int) -> int:
        """Renew a lease once; its TTL now (0: the lease is gone, expired or revoked)."""
        result = self.call("/v3/lease/keepalive", {"ID": str(lease)}).get("result") or {}
        return _int(result.get("TTL"), "a TTL")

    def time_to_live(self, lease: int) -> int:
        """Seconds left on a lease (-1: gone)."""
        return _int(self.call("/v3/lease/timetolive", {"ID": str(lease)}).get("TTL"), "a TTL")

    def revoke(self, lease: int) -> None:
        """End a lease now: every key under it goes."""
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if "lease not found" not in str(e):
                raise

    # ---- watch ----------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int = 0, timeout: float | None = None) -> "Watch":
        """Events under prefix from start_revision (0: from now).  Iterate it; a quiet stream
        ends the iteration after `timeout` seconds (None: waits for ever); close() ends it."""
        return Watch(self, prefix, start_revision, timeout)

    # ---- claims ---------------------------------------------------------------------------------
    def claim(self, key: str, value: str, lease: int = 0) -> KV | None:
        """Create key if nobody has: None on success, else the holder's key-value (one transaction)."""
        ok, responses = self.txn([self.absent(key)], [self.op_put(key, value, lease)], [self.op_get(key)])
        if ok:
            return None
        for r in responses:
            kvs = (r.get("response_range") or {}).get("kvs") or []
            if kvs:
                return _kv(kvs[0])
        return self.get(key) or KV(key, b"", 0, 0, 0)     # gone since: still, it was not ours


class Watch:
    """A watch stream (POST /v3/watch: one JSON message per line)."""

    def __init__(self, etcd: Etcd, prefix: str, start_revision: int, timeout: float | None):
        self.etcd, self.prefix = etcd, prefix
        self.conn = etcd._connect(etcd.timeout)
        body = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix)}}
        if start_revision:
            body["create_request"]["start_revision"] = str(start_revision)
        try:
            self.conn.request("POST", "/v3/watch", json.dumps(body), {"Content-Type": "application/json"})
            self.resp = self.conn.getresponse()
            self.conn.sock.settimeout(timeout)
            first = self._message()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise etcd._unreachable(e) from None
        if first is None or not first.get("created"):
            self.close()
            raise EtcdError(f"etcd at {etcd.endpoint} did not start a watch of {prefix!r}")
        self.pending: list[Event] = self._events(first)

    def _message(self) -> dict | None:
        line = self.resp.readline(MAX_ANSWER + 1)
        if not line:
            return None
        try:
            msg = json.loads(line)
        except ValueError:
            raise EtcdError(f"etcd at {self.etcd.endpoint} sent a watch message that is not JSON") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("result", {}), dict):
            raise EtcdError(f"etcd at {self.etcd.endpoint} sent a watch message that is not an object")
        if "error" in msg:
            raise EtcdError(f"etcd at {self.etcd.endpoint} ended the watch of {self.prefix!r}: "
                            f"{str(msg.get('message') or msg['error'])[:300]}")
        return msg.get("result", {})

    def _events(self, result: dict) -> list[Event]:
        out = []
        if result.get("canceled"):
            raise EtcdError(f"etcd at {self.etcd.endpoint} cancelled the watch of {self.prefix!r}: "
                            f"{str(result.get('cancel_reason', ''))[:300]}")
        for ev in result.get("events") or []:
            if not isinstance(ev, dict):
                raise EtcdError(f"etcd at {self.etcd.endpoint} sent a watch event that is not an object")
            kind = ev.get("type", "PUT")
            if kind not in ("PUT", "DELETE"):
                raise EtcdError(f"etcd at {self.etcd.endpoint} sent a watch event of type {kind!r:.40}")
            out.append(Event(kind, _kv(ev.get("kv") or {})))
        return out

    def __iter__(self):
        return self

    def __next__(self) -> Event:
        while not self.pending:
            try:
                msg = self._message()
            except (socket.timeout, TimeoutError):
                self.close()
                raise StopIteration from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise self.etcd._unreachable(e) from None
            if msg is None:
                self.close()
                raise StopIteration
            self.pending = self._events(msg)
        return self.pending.pop(0)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def renew(etcd: Etcd, lease: int, ttl: int, alive=lambda: True) -> str | None:
    """Renew a lease every third of its TTL, as clientv3 does, while alive() holds; the
    reason it was lost (etcd says it is gone, or no answer for longer than the TTL, when
    etcd has expired it anyway), or None once alive() is false (then it is left to expire)."""
    last_ok = time.monotonic()
    pause = max(ttl / 3, 0.2)
    while True:
        time.sleep(pause)
        if not alive():
            return None
        pause = max(ttl / 3, 0.2)
        try:
            if etcd.keepalive(lease) <= 0:
                return f"lease {lease:x} expired or was revoked"
            last_ok = time.monotonic()
        except EtcdError as e:
            pause = 0.5         # a renewal that failed is tried again soon, not a third of the TTL later
            if time.monotonic() - last_ok > ttl:
                return str(e)


class KeepAlive:
    """Keeps a lease alive until stop(); `lost` is set when etcd says the lease is gone or
    stops answering for longer than the TTL, and on_lost(reason) is called once.

    The renewals run in a child process (runtime/lease.py, renew()), not a thread of this
    one: a thread needs this interpreter's GIL for every step of a renewal, and an agent
    building a big shard holds it for long stretches (a full pass of the cyclic garbage
    collector over a 15,000-node compile holds it 0.6 s on an idle CPU, many seconds on a
    starved one), so its 10 s lease expired while it compiled (bench/README.md, issue 20).
    The child renews only while this process lives (its parent PID checked before each
    renewal): a dead agent's lease still expires within its TTL."""

    def __init__(self, etcd: Etcd, lease: int, ttl: int, on_lost=None):
        import subprocess       # lazy: only an agent keeps a lease
        from . import spawn
        self.etcd, self.lease, self.ttl, self.on_lost = etcd, lease, ttl, on_lost
        self.lost: str | None = None
        self._stopping = threading.Event()
        files = {var: path for (field_, _, var) in TLS_FILES
                 if (path := getattr(etcd.credentials, field_))}
        self._proc = subprocess.Popen(
            spawn.python("nslab.runtime.lease", etcd.endpoint, f"{lease:x}", str(ttl), str(os.getpid())),
            cwd=spawn.CWD, env=spawn.env(**files), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._watch, name=f"etcd-lease-{lease:x}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        line = self._proc.stdout.readline(4096).strip()     # the keeper's one line: why the lease was lost
        code = self._proc.wait()
        if not self._stopping.is_set():
            self.lost = one_line(line) if line else f"the keeper of lease {self.lease:x} ended (exit {code})"
            if self.on_lost is not None:
                self.on_lost(self.lost)

    def stop(self, revoke: bool = True) -> None:
        self._stopping.set()
        if self._proc.poll() is None:
            self._proc.terminate()          # our own child, by its PID
        self._proc.wait()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        if revoke and self.lost is None:
            self.etcd.revoke(self.lease)


# ---- what nslab keeps: machines, labs, stitch VNIs ------------------------------------------------

@dataclass(frozen=True)
class Machine:
    name: str
    address: str
    underlay_mtu: int
    lease: int = 0


def _machine_record(kv: KV) -> Machine:
    data = json_value(kv)
    name = kv.key[len(f"{PREFIX}/machines/"):]
    if not isinstance(data, dict) or set(data) != {"name", "address", "underlay_mtu"}:
        raise EtcdError(f"etcd key {kv.key!r:.200} is not a machine record (name, address, underlay_mtu)")
    if machine_problem(name) or data["name"] != name:
        raise EtcdError(f"etcd key {kv.key!r:.200} names machine {data['name']!r:.80}: not its key's valid name")
    try:
        address = str(IPv4Address(data["address"]))
    except ValueError:
        raise EtcdError(f"etcd key {kv.key!r:.200}: address {data['address']!r:.80} is not an IPv4 address") from None
    mtu = data["underlay_mtu"]
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise EtcdError(f"etcd key {kv.key!r:.200}: underlay_mtu {mtu!r:.40} is not an MTU (68 to 65535)")
    return Machine(name, address, mtu, kv.lease)


def register_machine(etcd: Etcd, name: str, address: str, underlay_mtu: int, lease: int) -> Machine:
    """Claim a machine name under the agent's lease: a second agent with the same name is refused."""
    problem = machine_problem(name)
    if problem:
        raise UsageError(problem)
    machine = Machine(name, str(IPv4Address(address)), underlay_mtu, lease)
    key = f"{PREFIX}/machines/{name}"
    value = json.dumps({"name": name, "address": machine.address, "underlay_mtu": underlay_mtu})
    holder = etcd.claim(key, value, lease)
    if holder is not None:
        raise Claimed(f"machine name {name} is taken in etcd at {etcd.endpoint} (lease {holder.lease:x}); "
                      f"another agent runs as {name}, or its lease has not expired yet")
    return machine


def machines(etcd: Etcd) -> tuple[list[Machine], list[str]]:
    """The registered machines, and a sentence for each record that is not valid (skipped)."""
    kvs, _ = etcd.get_prefix(f"{PREFIX}/machines/")
    good, bad = [], []
    for kv in kvs:
        try:
            good.append(_machine_record(kv))
        except EtcdError as e:
            bad.append(str(e))
    return good, bad


def machine_names(etcd: Etcd) -> tuple[set[str], int]:
    """The names of the machines registered (valid records only), and the revision read at."""
    kvs, rev = etcd.get_prefix(f"{PREFIX}/machines/")
    names = set()
    for kv in kvs:
        try:
            names.add(_machine_record(kv).name)
        except EtcdError:
            pass
    return names, rev


def claim_lab(etcd: Etcd, lab: str, machine: str, lease: int = 0) -> None:
    """Claim a lab name for the cluster (one transaction): a second `up` of that name is refused."""
    if not isinstance(lab, str) or not LAB_NAME_RE.fullmatch(lab) or len(lab) > MAX_LAB_NAME:
        raise UsageError(f"lab name {lab!r} must be lowercase letters, digits, '-' or '_'")
    holder = etcd.claim(f"{PREFIX}/labs/{lab}", json.dumps({"lab": lab, "machine": machine}), lease)
    if holder is not None:
        raise Claimed(f"lab {lab} already runs in the cluster at {etcd.endpoint}: "
                      f"{holder.value.decode('utf-8', 'replace')[:200]}")


def release_lab(etcd: Etcd, lab: str) -> None:
    etcd.delete(texts_prefix(lab), prefix=True)
    etcd.delete(f"{PREFIX}/labs/{lab}")
    release_vnis(etcd, lab)


def allocate_vnis(etcd: Etcd, lab: str, stitches: list[str], base: int = 5001, tries: int = 10) -> dict[str, int]:
    """A VNI for each stitch (its id, e.g. 'leaf01:eth1'), unique in the cluster: the lowest
    free ones from base, taken in transactions of at most MAX_TXN_OPS keys, each key created
    only if absent.  A batch that loses a race is read again and retried with fresh numbers
    (at most `tries` lost races); on failure the VNIs taken so far are given back.
    {stitch: VNI}."""
    taken: dict[str, int] = {}
    try:
        todo, lost = list(stitches), 0
        while todo:
            kvs, _ = etcd.get_prefix(f"{PREFIX}/vnis/")
            used = set(taken.values())
            for kv in kvs:
                tail = kv.key[len(f"{PREFIX}/vnis/"):]
                if tail.isascii() and tail.isdigit():
                    used.add(int(tail))
            batch, vni = todo[:MAX_TXN_OPS], base
            picks = []
            for stitch in batch:
                while vni in used:
                    vni += 1
                if vni > MAX_VNI:
                    raise EtcdError(f"no free VNI left from {base} in etcd at {etcd.endpoint}")
                picks.append((stitch, vni))
                used.add(vni)
            keys = [f"{PREFIX}/vnis/{v}" for _, v in picks]
            ok, _ = etcd.txn([etcd.absent(k) for k in keys],
                             [etcd.op_put(k, f"{lab}/{s}") for k, (s, _) in zip(keys, picks)])
            if ok:
                taken.update(picks)
                todo = todo[len(batch):]
                continue
            lost += 1           # another lab took one of these numbers first: read again
            if lost >= tries:
                raise EtcdError(f"could not take {len(todo):,} VNIs in etcd at {etcd.endpoint} after {tries} "
                                f"tries (other labs are taking them too)")
        return taken
    except BaseException:
        _delete_vnis(etcd, list(taken.values()))
        raise


def _delete_vnis(etcd: Etcd, vnis: list[int]) -> None:
    for i in range(0, len(vnis), MAX_TXN_OPS):
        etcd.txn([], [etcd.op_delete(f"{PREFIX}/vnis/{v}") for v in vnis[i:i + MAX_TXN_OPS]])


def lab_vnis(etcd: Etcd, lab: str) -> dict[str, int]:
    """{stitch: VNI} of a lab, as etcd holds them (records of other labs, or not valid, skipped)."""
    kvs, _ = etcd.get_prefix(f"{PREFIX}/vnis/")
    out = {}
    for kv in kvs:
        tail = kv.key[len(f"{PREFIX}/vnis/"):]
        owner = kv.value.decode("utf-8", "replace")
        if tail.isascii() and tail.isdigit() and 1 <= int(tail) <= MAX_VNI and owner.startswith(f"{lab}/"):
            out[owner[len(lab) + 1:]] = int(tail)
    return out


def release_vnis(etcd: Etcd, lab: str) -> None:
    _delete_vnis(etcd, list(lab_vnis(etcd, lab).values()))


# ---- flannel's own keys (pkg/subnet/etcd/registry.go) ---------------------------------------------

@dataclass(frozen=True)
class SubnetLease:
    """One node's lease as flanneld's etcd subnet manager keeps it (lease.Lease/LeaseAttrs)."""
    subnet: IPv4Network
    public_ip: str
    backend_type: str
    backend_data: dict          # vxlan: {"VNI": 1, "VtepMAC": "..."}; host-gw, ipip, udp: {}
    lease: int = 0


def subnet_key(subnet: IPv4Network) -> str:
    """flannel's MakeSubnetKey: 10.244.1.0/24 -> 10.244.1.0-24 (IPv4 only)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def net_conf(cluster) -> dict:
    """The network config flanneld reads (net-conf.json) for a lab's cluster: Network,
    SubnetLen and Backend as flannel names them."""
    config = cluster.backend
    backend = {"Type": config.type}
    if config.type == "vxlan":
        backend["VNI"] = config.vni
        if config.gbp:
            backend["GBP"] = True
    if config.direct_routing:           # vxlan and ipip
        backend["DirectRouting"] = True
    if config.port is not None:         # vxlan and udp
        backend["Port"] = config.port
    return {"Network": str(cluster.network), "SubnetLen": cluster.subnet_len, "Backend": backend}


def put_network_config(etcd: Etcd, conf: dict, prefix: str = FLANNEL_PREFIX) -> None:
    etcd.put(f"{prefix}/config", json.dumps(conf))


def network_config(etcd: Etcd, prefix: str = FLANNEL_PREFIX) -> dict:
    """flannel's config as etcd holds it, checked as flannel's ParseConfig would read it."""
    kv = etcd.get(f"{prefix}/config")
    if kv is None:
        # flannel's errConfigNotFound
        raise EtcdError(f"flannel config not found in etcd at {etcd.endpoint} ({prefix}/config)")
    conf = json_value(kv)
    if not isinstance(conf, dict):
        raise EtcdError(f"etcd key {kv.key}: flannel's config is not a JSON object")
    try:
        IPv4Network(conf.get("Network"))
    except (ValueError, TypeError):
        raise EtcdError(f"etcd key {kv.key}: Network {conf.get('Network')!r:.80} is not an IPv4 network") from None
    sl = conf.get("SubnetLen", 24)
    if not isinstance(sl, int) or isinstance(sl, bool) or not 1 <= sl <= 30:
        raise EtcdError(f"etcd key {kv.key}: SubnetLen {sl!r:.40} is not a prefix length (1 to 30)")
    backend = conf.get("Backend", {"Type": "udp"})      # flannel's default backend when none is given
    if not isinstance(backend, dict) or backend.get("Type", "udp") not in backends.names():
        raise EtcdError(f"etcd key {kv.key}: Backend {backend!r:.80} is not a backend nslab knows "
                        f"({', '.join(backends.names())})")
    return conf


def _lease_value(lease: SubnetLease) -> str:
    # lease.LeaseAttrs marshalled by encoding/json: PublicIPv6 (a nil *ip.IP6) is null;
    # BackendData and BackendV6Data are omitempty (host-gw, ipip and udp write none).
    attrs = {"PublicIP": lease.public_ip, "PublicIPv6": None, "BackendType": lease.backend_type}
    if lease.backend_data:
        attrs["BackendData"] = lease.backend_data
    return json.dumps(attrs, separators=(",", ":"))      # json.Marshal's compact form


def create_subnet_lease(etcd: Etcd, lease: SubnetLease, ttl: int, prefix: str = FLANNEL_PREFIX) -> int:
    """flannel's createSubnet: a lease of ttl seconds, the key created only if absent (one
    transaction); the lease ID.  Taken: Claimed (and the new lease revoked, as flannel does)."""
    _check_lease(lease, "the lease to write")
    lid = etcd.grant(ttl)
    key = f"{prefix}/subnets/{subnet_key(lease.subnet)}"
    ok, _ = etcd.txn([etcd.absent(key)], [etcd.op_put(key, _lease_value(lease), lid)])
    if not ok:
        etcd.revoke(lid)
        raise Claimed(f"subnet {lease.subnet} is already leased in etcd at {etcd.endpoint}")
    return lid


def _check_lease(lease: SubnetLease, where: str) -> SubnetLease:
    if lease.backend_type not in backends.names():
        raise EtcdError(f"{where}: BackendType {lease.backend_type!r:.40} is not a backend nslab knows")
    data = lease.backend_data
    if not isinstance(data, dict):
        raise EtcdError(f"{where}: BackendData is not an object")
    if lease.backend_type == "vxlan":
        mac, vni = data.get("VtepMAC"), data.get("VNI", 1)
        if not isinstance(mac, str) or not MAC_RE.fullmatch(mac.lower()) or int(mac[:2], 16) & 1:
            raise EtcdError(f"{where}: VtepMAC {mac!r:.40} is not a unicast MAC address")
        if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni <= MAX_VNI:
            raise EtcdError(f"{where}: VNI {vni!r:.40} is not a VNI (0 to {MAX_VNI:,})")
    try:
        IPv4Address(lease.public_ip)
    except ValueError:
        raise EtcdError(f"{where}: PublicIP {lease.public_ip!r:.80} is not an IPv4 address") from None
    return lease


def parse_subnet_lease(kv: KV, prefix: str = FLANNEL_PREFIX) -> SubnetLease:
    """A key under <prefix>/subnets/ back into a lease (flannel's kvToIPLease), checked."""
    tail = kv.key[len(f"{prefix}/subnets/"):] if kv.key.startswith(f"{prefix}/subnets/") else None
    m = SUBNET_KEY_RE.fullmatch(tail or "")
    try:
        subnet = IPv4Network(f"{m[1]}/{m[2]}") if m else None
    except ValueError:
        subnet = None
    if subnet is None:
        raise EtcdError(f"etcd key {kv.key!r:.200} is not a flannel subnet key (like 10.244.1.0-24)")
    data = json_value(kv)
    if not isinstance(data, dict):
        raise EtcdError(f"etcd key {kv.key!r:.200}: a subnet lease is a JSON object")
    return _check_lease(SubnetLease(subnet, data.get("PublicIP"), data.get("BackendType"),
                                    data.get("BackendData") if data.get("BackendData") is not None else {},
                                    kv.lease), f"etcd key {kv.key!r:.200}")


def subnet_leases(etcd: Etcd, prefix: str = FLANNEL_PREFIX) -> tuple[list[SubnetLease], int, list[str]]:
    """flannel's getSubnets: the leases, the revision to watch from, and a sentence for each
    key skipped as not valid (flannel logs "Ignoring bad subnet node" and goes on)."""
    kvs, revision = etcd.get_prefix(f"{prefix}/subnets/")
    leases, bad = [], []
    for kv in kvs:
        try:
            leases.append(parse_subnet_lease(kv, prefix))
        except EtcdError as e:
            bad.append(str(e))
    return leases, revision, bad


def subnet_events(etcd: Etcd, since: int, timeout: float | None = None, prefix: str = FLANNEL_PREFIX):
    """flannel's watchSubnets: ("added", lease) or ("removed", subnet) for each change under
    <prefix>/subnets/ after revision `since` (a getSubnets revision + 1), until the stream is
    quiet for `timeout` seconds.  An event whose key or value is not valid is skipped, as
    flannel's parseSubnetWatchResponse errors are: ("bad", sentence)."""
    with etcd.watch(f"{prefix}/subnets/", since, timeout) as events:
        for ev in events:
            try:
                if ev.type == "DELETE":
                    m = SUBNET_KEY_RE.fullmatch(ev.kv.key[len(f"{prefix}/subnets/"):])
                    if m is None:
                        raise EtcdError(f"etcd key {ev.kv.key!r:.200} is not a flannel subnet key")
                    yield "removed", IPv4Network(f"{m[1]}/{m[2]}")
                else:
                    yield "added", parse_subnet_lease(ev.kv, prefix)
            except (EtcdError, ValueError) as e:
                yield "bad", str(e)


# ---- which lab's cluster holds flannel's keys -------------------------------------------------------

FLANNEL_OWNER = f"{PREFIX}/flannel-owner"      # the lab whose cluster is at FLANNEL_PREFIX


def flannel_prefix(etcd: Etcd, lab: str) -> str:
    """Where lab `lab`'s cluster keeps flannel's config and leases: flannel's default
    --etcd-prefix, /coreos.com/network, for the first lab across machines to claim it (one
    transaction); another lab's at /nslab/flannel/LAB/network, as a flanneld started with
    --etcd-prefix=/nslab/flannel/LAB/network would read it (one network per prefix)."""
    holder = etcd.claim(FLANNEL_OWNER, lab)
    if holder is None or holder.value == lab.encode():
        return FLANNEL_PREFIX
    return f"{PREFIX}/flannel/{lab}/network"


def put_own_subnet_lease(etcd: Etcd, lease: SubnetLease, machine_lease: int, prefix: str) -> bool:
    """A node's lease written by its machine's agent, under the agent's etcd lease (the
    machine gone: its nodes' leases expire, as flannel's 24 h lease would, sooner): created
    if absent (flannel's createSubnet, one transaction), or taken over when it holds the
    same attributes (a restarted agent).  False: another writer holds that subnet."""
    _check_lease(lease, "the lease to write")
    key = f"{prefix}/subnets/{subnet_key(lease.subnet)}"
    value = _lease_value(lease)
    ok, _ = etcd.txn([etcd.absent(key)], [etcd.op_put(key, value, machine_lease)])
    if ok:
        return True
    kv = etcd.get(key)
    if kv is None or kv.value != value.encode():
        return False
    etcd.put(key, value, machine_lease)
    return True


def release_flannel(etcd: Etcd, lab: str) -> None:
    """`down`: the lab's flannel config and any lease left (a machine gone) removed, and
    flannel's default prefix given back if the lab held it."""
    prefix = flannel_prefix(etcd, lab)
    etcd.delete(f"{prefix}/", prefix=True)          # config and subnets/
    if prefix == FLANNEL_PREFIX:
        etcd.txn([{"key": _b64(FLANNEL_OWNER), "target": "VALUE", "result": "EQUAL", "value": _b64(lab)}],
                 [etcd.op_delete(FLANNEL_OWNER)])


# ---- shards: a lab's part on each machine (the host writes, the machine's agent builds) ----------

AGENT_PORT = 7400               # each agent's channel, on its underlay address
TOKEN_KEY = f"{PREFIX}/credential"
TOKEN_RE = re.compile(r"[0-9a-f]{64}")
SHARD_FIELDS = {"lab", "file", "text", "machines", "vnis", "port", "underlay_mtu", "overrides"}
SHARD_STATES = ("up", "failed")


def cluster_token(etcd: Etcd) -> str:
    """The cluster's credential for the agents' channel: made once (created only if absent,
    in one transaction), read back by every agent and client.  Whoever may read etcd may
    use the agents: etcd's own access control (TLS client certificates) guards it."""
    import secrets              # lazy: only here
    etcd.claim(TOKEN_KEY, secrets.token_hex(32))
    kv = etcd.get(TOKEN_KEY)
    token = kv.value.decode("ascii", "replace") if kv else ""
    if not TOKEN_RE.fullmatch(token):
        raise EtcdError(f"etcd key {TOKEN_KEY} does not hold a credential nslab made (64 hex digits)")
    return token


def shard_key(machine: str, lab: str) -> str:
    return f"{PREFIX}/shards/{machine}/{lab}"


def status_key(lab: str, machine: str) -> str:
    return f"{PREFIX}/status/{lab}/{machine}"


# A lab's text too big for one etcd value (a request is at most 1.5 MiB, nslab reads at most
# MAX_VALUE): stored once for all its machines, zlib-compressed and split into parts under
# /nslab/texts/LAB/0000, 0001 ... (each written before the specs that name it); the specs
# then hold "text": "" and "text_parts" {"parts", "bytes", "size", "sha256"} to check
# what is read back against.  A spec up to INLINE_SPEC bytes keeps its text inline, as
# `etcdctl get` shows it.
INLINE_SPEC = 512 << 10
TEXT_PART = 512 << 10           # compressed bytes a part (base64 in the gateway's JSON: 683 KiB a request)
MAX_TEXT = MAX_FILE_BYTES       # the largest topology file nslab reads
MAX_TEXT_PARTS = MAX_TEXT // TEXT_PART + 2      # zlib's output may exceed its input a little
TEXT_PART_RE = re.compile(r"\d{4}")


def texts_prefix(lab: str) -> str:
    return f"{PREFIX}/texts/{lab}/"


def put_shards(etcd: Etcd, machines: list[str], spec: dict) -> None:
    """Lab spec["lab"]'s shard spec written for each of `machines` (its text in parts first
    when the spec is too big to be one value)."""
    import hashlib, zlib        # lazy: only a big lab
    value = json.dumps(spec)
    prefix = texts_prefix(spec["lab"])
    etcd.delete(prefix, prefix=True)        # parts of an earlier `up` of the name that did not finish
    if len(value) > INLINE_SPEC:
        raw = spec["text"].encode()
        data = zlib.compress(raw, 9)
        parts = [data[i:i + TEXT_PART] for i in range(0, len(data), TEXT_PART)]
        if len(raw) > MAX_TEXT or len(parts) > MAX_TEXT_PARTS:
            raise UsageError(f"lab {spec['lab']}: its text is {len(raw):,} bytes; a lab across machines "
                             f"holds at most {MAX_TEXT:,}")
        for n, part in enumerate(parts):
            etcd.put(f"{prefix}{n:04d}", part)
        value = json.dumps({**spec, "text": "", "text_parts": {
            "parts": len(parts), "bytes": len(data), "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}})
    for machine in machines:
        etcd.put(shard_key(machine, spec["lab"]), value)


def _stored_text(etcd: Etcd, lab: str, meta, where: str) -> str:
    """A text put_shards split into parts, read back and checked as input: the parts'
    keys, count and sizes, the compressed and the inflated size, the checksum."""
    import hashlib, zlib
    if not isinstance(meta, dict) or set(meta) != {"parts", "bytes", "size", "sha256"} \
            or not all(isinstance(meta[k], int) and not isinstance(meta[k], bool) for k in ("parts", "bytes", "size")) \
            or not 1 <= meta["parts"] <= MAX_TEXT_PARTS or not 0 <= meta["size"] <= MAX_TEXT \
            or not 0 < meta["bytes"] <= meta["parts"] * TEXT_PART \
            or not (isinstance(meta["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])):
        raise EtcdError(f"{where}: text_parts is not {{parts, bytes, size, sha256}} within nslab's limits")
    prefix = texts_prefix(lab)
    kvs, _ = etcd.get_prefix(prefix)
    names = [kv.key[len(prefix):] for kv in kvs]
    if names != [f"{n:04d}" for n in range(meta["parts"])]:
        raise EtcdError(f"{where}: etcd holds {len(kvs)} parts of its text under {prefix}, not the "
                        f"{meta['parts']} it names")
    if any(len(kv.value) > TEXT_PART for kv in kvs) or sum(len(kv.value) for kv in kvs) != meta["bytes"]:
        raise EtcdError(f"{where}: the parts of its text under {prefix} are not {meta['bytes']:,} bytes")
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(b"".join(kv.value for kv in kvs), meta["size"] + 1)
    except zlib.error:
        raise EtcdError(f"{where}: its text under {prefix} is not zlib data") from None
    if len(raw) != meta["size"] or not inflate.eof or inflate.unconsumed_tail or inflate.unused_data \
            or hashlib.sha256(raw).hexdigest() != meta["sha256"]:
        raise EtcdError(f"{where}: its text under {prefix} is not the {meta['size']:,} bytes of sha256 "
                        f"{meta['sha256'][:12]}... it names")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EtcdError(f"{where}: its text under {prefix} is not UTF-8") from None


def parse_shard(etcd: Etcd, kv: KV, machine: str) -> dict:
    """A shard spec read back from etcd, checked for what each value becomes (the topology
    text itself is checked by the model, as a file is); a text stored in parts is read
    back into spec["text"]."""
    lab = kv.key[len(f"{PREFIX}/shards/{machine}/"):]
    spec = json_value(kv)
    where = f"etcd key {kv.key!r:.200}"
    if not isinstance(spec, dict) or set(spec) - {"text_parts"} != SHARD_FIELDS:
        raise EtcdError(f"{where} is not a shard ({', '.join(sorted(SHARD_FIELDS))})")
    if spec["lab"] != lab or not LAB_NAME_RE.fullmatch(lab) or len(lab) > MAX_LAB_NAME:
        raise EtcdError(f"{where}: lab {spec['lab']!r:.80} is not its key's valid lab name")
    if not isinstance(spec["text"], str) or not isinstance(spec["file"], str) or len(spec["file"]) > 4096:
        raise EtcdError(f"{where}: text and file must be strings")
    ms = spec["machines"]
    if not isinstance(ms, list) or not ms or machine not in [m[0] for m in ms if isinstance(m, list)]:
        raise EtcdError(f"{where}: machines must be a list of [name, address] holding {machine}")
    for m in ms:
        if not (isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and not machine_problem(m[0])):
            raise EtcdError(f"{where}: {m!r:.80} is not [machine, address]")
        try:
            IPv4Address(m[1])
        except ValueError:
            raise EtcdError(f"{where}: machine {m[0]}'s address {m[1]!r:.40} is not IPv4") from None
    vnis = spec["vnis"]
    if not isinstance(vnis, list) or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_VNI
                                             for v in vnis) or len(set(vnis)) != len(vnis):
        raise EtcdError(f"{where}: vnis must be distinct VNIs (1 to {MAX_VNI:,})")
    if not isinstance(spec["port"], int) or not 1 <= spec["port"] <= 65535:
        raise EtcdError(f"{where}: port {spec['port']!r:.20} is not a UDP port")
    if not isinstance(spec["underlay_mtu"], int) or not 68 <= spec["underlay_mtu"] <= 65535:
        raise EtcdError(f"{where}: underlay_mtu {spec['underlay_mtu']!r:.20} is not an MTU")
    ov = spec["overrides"]
    if not isinstance(ov, dict) or not all(k in ("backend", "proxy_mode") and isinstance(v, str) and len(v) < 64
                                           for k, v in ov.items()):
        raise EtcdError(f"{where}: overrides may set only backend and proxy_mode")
    if "text_parts" in spec:
        spec["text"] = _stored_text(etcd, lab, spec.pop("text_parts"), where)
    return spec


def shards(etcd: Etcd, machine: str) -> tuple[dict[str, dict], int, list[str]]:
    """{lab: spec} of the shards assigned to `machine`, the revision read at, and a sentence
    for each record that is not valid (skipped)."""
    kvs, rev = etcd.get_prefix(f"{PREFIX}/shards/{machine}/")
    good, bad = {}, []
    for kv in kvs:
        try:
            spec = parse_shard(etcd, kv, machine)
            good[spec["lab"]] = spec
        except EtcdError as e:
            bad.append(str(e))
    return good, rev, bad


def put_status(etcd: Etcd, lab: str, machine: str, status: str, lease: int, namespaces: int = 0,
               error: str = "") -> None:
    etcd.put(status_key(lab, machine),
             json.dumps({"state": status, "namespaces": namespaces, "error": error[:1000]}), lease)


def statuses(etcd: Etcd, lab: str | None = None) -> dict[tuple[str, str], dict]:
    """{(lab, machine): {"state", "namespaces", "error"}} (records not valid are skipped)."""
    prefix = f"{PREFIX}/status/" + (f"{lab}/" if lab else "")
    kvs, _ = etcd.get_prefix(prefix)
    out = {}
    for kv in kvs:
        parts = kv.key[len(f"{PREFIX}/status/"):].split("/")
        try:
            data = json_value(kv)
        except EtcdError:
            continue
        if len(parts) == 2 and isinstance(data, dict) and data.get("state") in SHARD_STATES \
                and isinstance(data.get("namespaces"), int) and isinstance(data.get("error"), str):
            out[(parts[0], parts[1])] = data
    return out


def lab_shards(etcd: Etcd, lab: str) -> list[str]:
    """The machines that hold a shard spec of `lab`."""
    kvs, _ = etcd.get_prefix(f"{PREFIX}/shards/")
    out = []
    for kv in kvs:
        machine, _, name = kv.key[len(f"{PREFIX}/shards/"):].partition("/")
        if name == lab and not machine_problem(machine):
            out.append(machine)
    return out


def lab_claimed(etcd: Etcd, lab: str) -> bool:
    return etcd.get(f"{PREFIX}/labs/{lab}") is not None


def labs(etcd: Etcd) -> list[str]:
    """The names of the labs claimed in the cluster (keys that are not a valid lab name skipped)."""
    kvs, _ = etcd.get_prefix(f"{PREFIX}/labs/")
    names = (kv.key[len(f"{PREFIX}/labs/"):] for kv in kvs)
    return [n for n in names if LAB_NAME_RE.fullmatch(n) and len(n) <= MAX_LAB_NAME]


# ---- `down` with a machine gone: what is left for it ------------------------------------------------

def pending_key(machine: str, lab: str) -> str:
    return f"{PREFIX}/pending/{machine}/{lab}"


def put_pending(etcd: Etcd, machine: str, lab: str) -> None:
    etcd.put(pending_key(machine, lab), json.dumps({"lab": lab}))


def pending(etcd: Etcd, machine: str | None = None) -> list[str] | dict[str, list[str]]:
    """The labs whose `down` waits for `machine` (its agent finishes them); without a
    machine: {lab: [machine, ...]} for every machine (keys not valid skipped)."""
    kvs, _ = etcd.get_prefix(f"{PREFIX}/pending/" + (f"{machine}/" if machine else ""))
    out: dict[str, list[str]] = {}
    for kv in kvs:
        m, _, lab = kv.key[len(f"{PREFIX}/pending/"):].partition("/")
        if not machine_problem(m) and LAB_NAME_RE.fullmatch(lab) and len(lab) <= MAX_LAB_NAME:
            out.setdefault(lab, []).append(m)
    return sorted(out) if machine else out


def finish_pending(etcd: Etcd, machine: str, lab: str) -> None:
    """Machine `machine` has removed its part of lab `lab`: its pending key deleted, and,
    when no machine is left pending and no shard spec remains, the lab's flannel keys, claim
    and VNIs given back (what `down` gives back when every machine answers)."""
    etcd.delete(pending_key(machine, lab))
    if lab not in pending(etcd) and not lab_shards(etcd, lab):
        release_flannel(etcd, lab)
        release_lab(etcd, lab)
