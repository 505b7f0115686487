"""The other commands for a lab across machines, over the agent's authenticated channel
(issue 20, item 2): show, exec (with a TTY when stdin is one), shell, capture, link
set/show/clear, test (--only; --all-pairs: its parts), trace (its parts) and rewire, run on the machine that holds the node by that machine's own
`nslab` (today's commands and observers: no second implementation).

POST /v1/run (the agent serves it only with the cluster's credential, machine_agent.py)
carries one JSON request: {"lab", "command" (a key of COMMANDS), "target" (NODE or
NODE:IFACE), "dst" (trace), "options" ({"rate": "10mbit", "json": true, ...}, only those
COMMANDS allows: no option that names a file on the agent's machine), "argv" (exec),
"tty", "rows", "cols", "term"}.  The agent checks the lab is one of its shards and the
node one of that shard's recorded nodes; its own command then validates every name as it
does locally.  It answers 200 and the connection becomes a stream: agent -> client
frames of one kind byte (o: output, e: error output, x: exit code) and a 4-byte length;
client -> agent frames (i: input, c: end of input, w: window size, rows and columns).  With "tty" the
command runs on a pseudo-terminal (pty), so `shell` and `exec` behave as at a console.

The transport: when the cluster has a CA (etcd with TLS client certificates: a CA and a
certificate in --etcd-ca/--etcd-cert or $NSLAB_ETCD_CA/_CERT, coord.credentials), mutual
TLS: the agent serves HTTPS with its certificate and requires a client certificate from
that CA (server()); the client checks the agent's certificate against the CA and offers
its own (connect(), http_connection()).  The token is checked as well: it is etcd's
(whoever may read etcd may use the agents) and mutual TLS keeps it off the wire in clear.
Without a CA: plain HTTP and the token, as before.
"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import socket
import ssl
import struct
import subprocess
import sys
import termios
import threading
from http.server import ThreadingHTTPServer

from . import coord, spawn, state
from .errors import NslabError, UsageError

# command -> (its words on the command line, options that take a value, flags)
COMMANDS = {
    "show": (["show"], (), ("brief", "json")),
    "exec": (["exec"], (), ()),
    "shell": (["shell"], (), ()),
    "capture": (["capture"], ("count", "filter", "write"), ("decode", "json")),     # write: "-" only
    "link-set": (["link", "set"], ("rate", "delay", "jitter", "loss", "limit", "burst"), ("without-netem",)),
    "link-show": (["link", "show"], (), ("all", "json")),
    "link-clear": (["link", "clear"], (), ()),
    "trace": (["trace"], ("proto", "port", "ttl", "timeout"), ("brief", "json")),
    # one machine's part of a trace across machines (across.trace, observe/trace.part)
    "trace-part": (["trace-part"], ("src", "dst", "proto", "port", "ttl", "timeout"), ("send",)),
    # a test's probe watched at this machine's nodes (across.test, observe/checks.watch_part)
    "watch-part": (["watch-part"], ("node",), ()),
    "rewire": (["rewire"], (), ()),                     # each machine's containers, by its agent
    "test": (["test"], ("only",), ("json",)),
    # a machine's part of `test --all-pairs`: pings from its nodes (across.all_pairs, checks.pairs_part)
    "pairs-part": (["pairs-part"], (), ("hosts",)),
}
MAX_REQUEST = 1 << 16
TERM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}")


def _frame(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("!I", len(data)) + data


def _read_frame(read) -> tuple[bytes, bytes] | None:
    head = read(5)
    if len(head) < 5:
        return None
    kind, size = head[:1], struct.unpack("!I", head[1:])[0]
    if size > 1 << 20:
        return None
    data = read(size) if size else b""
    return (kind, data) if len(data) == size else None


# ---- the transport -------------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 10.0


def _mutual() -> coord.Credentials | None:
    """The cluster's credentials from the environment, if they make mutual TLS."""
    creds = coord.credentials()
    return creds if creds.mutual else None


class _TLSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer over mutual TLS: each connection's handshake in its own thread
    (a client that never finishes one holds only its thread, for HANDSHAKE_TIMEOUT)."""

    def __init__(self, address, handler, creds: coord.Credentials):
        self.context = creds.server_context()
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            request.do_handshake()          # no certificate from the cluster's CA: no request read
            request.settimeout(None)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def server(address: tuple[str, int], handler, creds: coord.Credentials | None) -> ThreadingHTTPServer:
    """The agent's channel server on `address`: mutual TLS with `creds` if they have a CA
    and a certificate, else plain HTTP (the token alone)."""
    if creds is not None and creds.mutual:
        return _TLSServer(address, handler, creds)
    return ThreadingHTTPServer(address, handler)


def _tls_refused(url: str, e: ssl.SSLError) -> NslabError:
    reason = str(e.reason or e).replace("_", " ").lower()
    url = "https://" + url.split("://", 1)[-1]          # what was dialled: TLS, whatever the URL's scheme
    if isinstance(e, ssl.SSLCertVerificationError):
        return NslabError(f"the agent at {url} shows a certificate not from the cluster's CA "
                          f"($NSLAB_ETCD_CA) for that address ({e.verify_message or reason})")
    return NslabError(f"the agent at {url} refused the TLS connection ({reason}): is this side's "
                      f"certificate ($NSLAB_ETCD_CERT) from the cluster's CA?")


def connect(url: str, timeout: float) -> socket.socket:
    """A connection to the agent at `url` (http://HOST:PORT): mutual TLS when the cluster
    has a CA (its certificate checked against the CA and HOST), else plain TCP."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    creds = _mutual()
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    if creds is None:
        return sock
    try:
        return creds.client_context().wrap_socket(sock, server_hostname=u.hostname)
    except ssl.SSLError as e:
        sock.close()
        raise _tls_refused(url, e) from None
    except OSError:
        sock.close()
        raise


def http_connection(url: str, timeout: float):
    """An http.client connection to the agent at `url`, over the transport connect() uses."""
    import http.client                  # lazy: only here
    from urllib.parse import urlsplit
    u = urlsplit(url)
    creds = _mutual()
    if creds is None:
        return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=creds.client_context())


# ---- the agent's side ---------------------------------------------------------------------

def command_argv(req: dict, shards) -> list[str]:
    """The agent's `nslab` argv for request `req` (validated), or ValueError naming why.
    shards(lab) -> the lab's record here (None: not a shard of this machine)."""
    if not isinstance(req, dict):
        raise ValueError("a JSON object is expected")
    lab, command = req.get("lab"), req.get("command")
    if command not in COMMANDS:
        raise ValueError(f"no command {str(command)[:40]!r} (one of {', '.join(COMMANDS)})")
    if not state.valid_lab(lab):
        raise ValueError("no valid lab name")
    st = shards(lab)
    if st is None:
        raise LookupError(f"no shard of lab {lab!r} here")
    words, valued, flags = COMMANDS[command]
    argv = list(words) + ["-l", lab]
    for key in ("target", "dst"):
        value = req.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value or value.startswith("-") or len(value) > 64:
            raise ValueError(f"{key}: a node name (or NODE:IFACE) is expected")
        if key == "target" and value.partition(":")[0] not in st.nodes:
            raise LookupError(f"lab {lab} has no node {value.partition(':')[0]!r} here")
        argv.append(value)
    if command in ("exec", "shell", "capture", "link-set", "link-clear", "trace") and "target" not in req:
        raise ValueError(f"{command}: a target node is required")
    options = req.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError("options: an object is expected")
    if options.get("write", "-") != "-":
        raise ValueError(f"{command}: -w names no file on this machine: the pcap comes back on the stream (-w -)")
    for key, value in sorted(options.items()):
        if key in flags and value is True:
            argv.append(f"--{key}")
        elif key in valued and isinstance(value, list) and 0 < len(value) <= 256 \
                and all(isinstance(v, str) and "\0" not in v and len(v) <= 256 for v in value):
            argv += [f"--{key}={v}" for v in value]       # a repeatable option
        elif key in valued and isinstance(value, (str, int, float)) and not isinstance(value, bool) \
                and "\0" not in str(value) and len(str(value)) <= 256:
            argv.append(f"--{key}={value}")
        else:
            raise ValueError(f"{command}: option {str(key)[:40]!r} is not served across machines")
    if command == "exec":
        cmd = req.get("argv")
        if not (isinstance(cmd, list) and cmd and all(isinstance(a, str) and "\0" not in a for a in cmd)):
            raise ValueError("exec: argv, a non-empty list of strings, is expected")
        argv += ["--", *cmd]
    return argv


def _locked_reader(sock: ssl.SSLSocket, lock: threading.Lock):
    """read(n) for a TLS connection another thread writes to: OpenSSL forbids SSL_read and
    SSL_write on one connection at the same time (openssl/openssl#20446; CPython releases
    the GIL around both), so it waits outside `lock` (select, or bytes TLS has decrypted
    already) and reads under it without blocking, as the writer writes under it.  The
    client sends no frame before the answer's head, so the handler's buffer holds none."""
    def read(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            if not sock.pending():
                select.select([sock], [], [])
            with lock:
                sock.setblocking(False)
                try:
                    chunk = sock.recv(n - len(data))
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    continue                # a TLS record not whole yet
                finally:
                    sock.setblocking(True)
            if not chunk:
                break
            data += chunk
        return bytes(data)
    return read


def serve_run(handler, shards) -> None:
    """Answer POST /v1/run on `handler` (a BaseHTTPRequestHandler whose credential has been
    checked): run the command, stream its output and exit code back."""
    handler.close_connection = True
    size = int(handler.headers.get("Content-Length") or 0)
    try:
        if not 0 < size <= MAX_REQUEST:
            raise ValueError("a JSON body of at most 64 KiB")
        req = json.loads(handler.rfile.read(size))
        argv = command_argv(req, shards)
    except (ValueError, LookupError) as e:
        data = json.dumps({"error": str(e)}).encode()
        handler.send_response(404 if isinstance(e, LookupError) else 400)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return
    handler.send_response(200)
    handler.send_header("Content-Type", "application/x-nslab-stream")
    handler.end_headers()
    handler.wfile.flush()
    sock = handler.connection
    lock = threading.Lock()

    def send(kind: bytes, data: bytes) -> None:
        with lock:
            try:
                sock.sendall(_frame(kind, data))
            except OSError:
                pass

    tty = req.get("tty") is True
    env = spawn.env()
    term = req.get("term")
    env["TERM"] = term if isinstance(term, str) and TERM_RE.fullmatch(term) else "xterm"
    cmd = spawn.python("nslab.cli", *argv)
    if tty:
        master, slave = pty.openpty()
        rows, cols = req.get("rows"), req.get("cols")
        if isinstance(rows, int) and isinstance(cols, int) and 0 < rows < 1000 and 0 < cols < 1000:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def controlling_tty():        # the pty is the command's terminal: job control, ^C
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=spawn.CWD, env=env,
                                preexec_fn=controlling_tty, close_fds=True)
        os.close(slave)
        outs = {master: b"o"}
        stdin_fd = master
    else:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=spawn.CWD, env=env, start_new_session=True)
        outs = {proc.stdout.fileno(): b"o", proc.stderr.fileno(): b"e"}
        stdin_fd = proc.stdin.fileno()

    def pump_input():
        # TLS: this thread reads while the other writes, on one SSL connection (see _locked_reader)
        read = _locked_reader(sock, lock) if isinstance(sock, ssl.SSLSocket) else handler.rfile.read
        frame = None
        try:
            while (frame := _read_frame(read)) is not None:
                kind, data = frame
                if kind == b"i":
                    os.write(stdin_fd, data)
                elif kind == b"w" and tty and len(data) == 4:
                    rows, cols = struct.unpack("!HH", data)
                    fcntl.ioctl(stdin_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                elif kind == b"c":
                    if tty:
                        os.write(stdin_fd, b"\x04")
                    else:
                        proc.stdin.close()
                    return
        except (OSError, ValueError):
            pass
        finally:
            if proc.poll() is None and not tty:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        # the client has gone: its command ends with it (one we started, by its PID)
        if frame is None and proc.poll() is None:
            try:
                os.killpg(proc.pid, 15)
            except OSError:
                pass
    threading.Thread(target=pump_input, daemon=True).start()
    while outs:
        ready, _, _ = select.select(list(outs), [], [])
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:             # a pty's master once its last slave has closed: EIO
                data = b""
            if data:
                send(outs[fd], data)
            else:
                del outs[fd]
    rc = proc.wait()
    if tty:
        os.close(master)
    send(b"x", str(rc if rc >= 0 else 128 - rc).encode())


# ---- the host's side ----------------------------------------------------------------------

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run(url: str, token: str, req: dict, stdin=None, stdout=None, stderr=None) -> int:
    """Send request `req` to the agent at `url` and pass the stream through: the command's
    output to stdout/stderr (binary), stdin's bytes to it; its exit code.  With req["tty"],
    the local terminal is put in raw mode for the while."""
    from urllib.parse import urlsplit
    stdin = sys.stdin if stdin is None else stdin
    out_fd = (stdout or sys.stdout).fileno()
    err_fd = (stderr or sys.stderr).fileno()
    u = urlsplit(url)
    body = json.dumps(req).encode()
    buf = bytearray()
    try:
        sock = connect(url, timeout=30)
        sock.sendall(f"POST /v1/run HTTP/1.1\r\nHost: {u.hostname}\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in buf and (chunk := sock.recv(65536)):
            buf += chunk
        sock.settimeout(None)
    except ssl.SSLError as e:           # TLS 1.3: a client certificate refused shows on the first read
        raise _tls_refused(url, e) from None
    except OSError as e:
        raise NslabError(f"the agent at {url} does not answer ({e})") from None
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf = bytearray(rest)
    status = head.split(b"\r\n")[0].split()
    if len(status) < 2 or status[1] != b"200":
        try:
            while chunk := sock.recv(65536):
                buf += chunk
            error = json.loads(bytes(buf))["error"]
        except (ValueError, KeyError, TypeError, OSError):
            error = b" ".join(status[1:]).decode(errors="replace") or "no answer"
        sock.close()
        raise UsageError(f"the agent at {url} refused: {error}")
    saved = None
    in_fd = stdin.fileno()
    resized = None
    if req.get("tty") is True and os.isatty(in_fd):
        import signal                   # lazy: only here
        import tty as ttymod
        saved = termios.tcgetattr(in_fd)
        ttymod.setraw(in_fd, termios.TCSANOW)     # what was typed ahead stays, for the command
        # the terminal resized: its new size to the command's pty (a wake-up pipe, select sees it)
        resized, wake = os.pipe()
        os.set_blocking(wake, False)
        old_wakeup = signal.set_wakeup_fd(wake)
        old_handler = signal.signal(signal.SIGWINCH, lambda *_: None)
    try:
        watch = [sock, in_fd] + ([resized] if resized is not None else [])
        while True:
            while len(buf) >= 5:        # every whole frame received so far
                size = struct.unpack("!I", buf[1:5])[0]
                if len(buf) < 5 + size:
                    break
                kind, data = bytes(buf[:1]), bytes(buf[5:5 + size])
                del buf[:5 + size]
                if kind == b"x":
                    return int(data or b"1")
                os.write(out_fd if kind == b"o" else err_fd, data)
            # TLS: bytes already decrypted wait in the socket's buffer, which select does not see
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
            ready = [sock] if pending else select.select(watch, [], [])[0]
            if resized in ready:
                os.read(resized, 512)
                size = os.get_terminal_size(in_fd)
                sock.sendall(_frame(b"w", struct.pack("!HH", size.lines, size.columns)))
            if in_fd in ready:
                data = os.read(in_fd, 65536)
                sock.sendall(_frame(b"i", data) if data else _frame(b"c", b""))
                if not data:
                    watch = [sock]
            if sock in ready:
                try:
                    chunk = sock.recv(65536)
                except ssl.SSLWantReadError:    # a TLS record not whole yet
                    continue
                if not chunk:
                    raise NslabError(f"the agent at {url} closed the stream before the command ended")
                buf += chunk
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, old_handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(resized)
            os.close(wake)
        sock.close()
