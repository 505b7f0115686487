"""The `nslab web` server: aiohttp, the page and its JSON, counters as server-sent events.

Why aiohttp: a maintained asyncio framework with its own server (no second package to run
it), server-sent events as a plain StreamResponse, and signal handling in run_app that
stops the loop on Ctrl-C, so on_cleanup ends every capture and closes every socket.

Everything the page shows comes from nslab's own observers: the picture from
observe/graph.py (view.py), a node from observe/show.py, a trace from observe/trace.py, a
capture from observe/capture.py and decode.py, links' conditions from shaping.py and
lab.set_link; nothing here reads the kernel another way, but the counters (counters.py).

Guards (issue 22, item 8):
- binds 127.0.0.1 by default; any other address needs the token printed at start (a
  ?token= in the URL once, then an HttpOnly cookie);
- the Host header must name this server by an address it was bound to or `localhost`
  (DNS rebinding: a page of another site cannot talk to us through a name of its own),
  and an Origin header, when sent, must be this server's own; a POST must have one;
- changes (link conditions, down, up) only with --allow-changes;
- every name from the page is checked against the lab's record: labs that run, their
  nodes, their interfaces; a capture filter cannot carry tcpdump options.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import tempfile
import threading
from importlib import resources

from aiohttp import web

from .. import lab as labmod
from .. import state
from ..apply import netns
from ..errors import NslabError, UsageError
from ..observe import graph as graphmod
from . import counters as countermod
from . import view

MAX_CAPTURES = 4
MAX_ROWS = 5000                 # rows one capture streams before it stops by itself
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Lab:
    """One running lab's picture facts and counters (made on first use, dropped when it
    stops).  `topo` with no record: a picture only (bench/web.py's 10,000-node render)."""

    def __init__(self, name: str, topo=None):
        self.name = name
        self.st = state.load(name) if topo is None else None
        if self.st is None and topo is None:
            raise UsageError(f"no lab named {name!r} runs")
        if topo is None:
            self.topo, self.drawing = view.drawing(name, self.st)
        else:
            self.topo, self.drawing = topo, graphmod.build(topo)
        self.links = view.links(self.topo, self.drawing)
        self.counters = countermod.Counters.for_lab(self.st, self.topo)
        self.svgs: dict[frozenset | None, tuple[str, dict, list]] = {}
        self.lock = threading.Lock()

    def key(self, opened: str | None) -> frozenset | None:
        """The view a page asks for: None (every group open) or the groups it opened; a
        lab of more than view.COLLAPSE_ABOVE nodes starts collapsed."""
        if opened == "*" or (opened is None and len(self.topo.nodes) <= view.COLLAPSE_ABOVE):
            return None
        return frozenset(g for g in (opened or "").split(",") if g in self.drawing.groups)

    def picture(self, key: frozenset | None) -> tuple[str, dict, list]:
        """(SVG, model, the links drawn) of one view, laid out once."""
        with self.lock:
            if key not in self.svgs:
                d, members = view.collapse(self.drawing, set(key) if key is not None else None)
                drawn = {k for ks in members.values() for k in ks}
                self.svgs[key] = (view.svg(d, members), view.model(self.topo, d, members),
                                  [l for l in self.links if l["edge"] in drawn])
            return self.svgs[key]

    def tick(self, key: frozenset | None) -> dict:
        links = self.picture(key)[2]
        with self.lock:
            return self.counters.tick(links)

    def alive(self) -> bool:
        """The lab still runs with the namespaces this object read (one checked: a lab that
        went down, or down and up again, has none of them)."""
        if self.st is None:
            return True
        if not self.counters.ids:
            return self.name in state.labs()
        ns, identity = next(iter(self.counters.ids.items()))
        return state.ns_identity(netns.path(ns)) == identity

    def close(self) -> None:
        with self.lock:
            self.counters.close()


class Capture:
    """A capture started from the page: observe/capture.py's tcpdump in a pcap stream, each
    packet decoded (decode.py) into note 002's outer/inner rows, and the pcap kept for download."""

    def __init__(self, cid: str, lab: Lab, node: str, iface: str, bpf: str, folder: str):
        from ..observe import capture as capmod  # lazy: scapy-free, but only a capture needs it
        self.id, self.lab, self.where = cid, lab.name, f"{node}:{iface}"
        self.pcap = os.path.join(folder, f"{cid}.pcap")
        self.rows: list[dict] = []
        self.done = False
        self.cond = threading.Condition()
        self.cap = capmod.Capture(lab.st.nodes[node], iface, bpf, pcap="-", lab=lab.name,
                                  what=f"tcpdump {node}:{iface} (nslab web)")
        self.names, self.topo = None, lab.topo

    def start(self) -> None:
        self.cap.start()
        threading.Thread(target=self._loop, daemon=True, name=f"capture {self.id}").start()

    def _loop(self) -> None:
        from .. import backends
        from ..observe import capture as capmod
        from ..observe.decode import Names, decode_pcap, rows, summary
        names = Names.from_topology(self.topo)
        backend = self.topo.cluster.backend if self.topo.cluster is not None else None
        btype, port = (backend.type, backend.port) if backend else ("", None)
        encap = backends.encap_ports(backend)
        t0 = None
        try:
            with open(self.pcap, "wb") as keep:
                for n, (ts, linktype, data) in enumerate(self.cap.records(tee=keep), 1):
                    t0 = ts if t0 is None else t0
                    layers = decode_pcap(data, linktype, encap)
                    d = rows(layers, btype, port)
                    row = dict(n=n, time=round(ts - t0, 6), where=self.where, bytes=len(data),
                               **(capmod.decoded_dict(d, names) if d else {"summary": summary(layers, names)}))
                    with self.cond:
                        self.rows.append(row)
                        self.cond.notify_all()
                    if n >= MAX_ROWS:
                        self.cap.interrupt()
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def stop(self) -> None:
        self.cap.stop()


async def _no_content(request):
    return web.Response(status=204)


def _token_ok(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True
    given = request.query.get("token") or request.cookies.get("nslab_token") or ""
    return hmac.compare_digest(given.encode(), token.encode())


def _host_names(bind: str) -> set[str]:
    names = {"127.0.0.1", "localhost", "[::1]"} if bind in LOOPBACK or _loopback(bind) else set()
    names.add(f"[{bind}]" if ":" in bind else bind)
    return names


def _loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def make_app(bind: str = "127.0.0.1", port: int = 8080, lab: str | None = None, token: str | None = None,
             allow_changes: bool = False, fixed: dict[str, Lab] | None = None) -> web.Application:
    """The app; `fixed`: labs given as pictures (bench/web.py), served instead of the running ones."""
    hosts = {f"{h}:{port}" for h in _host_names(bind)}
    if port == 80:
        hosts |= _host_names(bind)
    origins = {f"http://{h}" for h in hosts}

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.host not in hosts:
            return web.Response(status=403, text=f"refused: Host {request.host!r} is not this server "
                                                  f"(DNS rebinding guard)\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in origins:
            return web.Response(status=403, text=f"refused: Origin {origin!r} is not this server\n")
        if request.method not in ("GET", "HEAD") and origin is None:
            return web.Response(status=403, text="refused: a change needs the page's Origin header\n")
        if not _token_ok(request, token):
            return web.Response(status=401, text="refused: this server needs the token it printed at start "
                                                 "(open the URL it printed)\n")
        try:
            response = await handler(request)
        except NslabError as e:
            return web.json_response({"error": str(e)}, status=400)
        if token is not None and request.query.get("token"):
            response.set_cookie("nslab_token", token, httponly=True, samesite="Strict")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response

    app = web.Application(middlewares=[guard])
    labs: dict[str, Lab] = {}
    making = threading.Lock()
    warming: list[asyncio.Task] = []          # held: the loop keeps only weak references to tasks
    captures: dict[str, Capture] = {}
    folder = tempfile.mkdtemp(prefix="nslab-web-")
    static = resources.files("nslab.web").joinpath("static")

    def running() -> list[str]:
        if fixed is not None:
            return sorted(fixed)
        return [l for l in state.labs() if (lab is None or l == lab)]

    def get_lab(request) -> Lab:
        return lab_named(request.match_info["lab"])

    def lab_named(name: str) -> Lab:
        if fixed is not None and name in fixed:
            return fixed[name]
        if not state.valid_lab(name) or name not in running():
            gone = labs.pop(name, None)
            if gone is not None:
                gone.close()
            raise web.HTTPNotFound(text=f"no lab named {name!r} runs\n")
        with making:
            have = labs.get(name)
            st = state.load(name)
            if have is None or st is None or have.st.ns_ids != st.ns_ids or have.st.file != st.file:
                if have is not None:
                    have.close()
                labs[name] = have = Lab(name)
            return have

    def node_of(lb: Lab, name: str) -> str:
        if lb.st is None or name not in lb.st.nodes:
            raise web.HTTPNotFound(text=f"lab {lb.name} has no node {name!r}\n")
        return name

    async def off_loop(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def page(request):
        return web.Response(text=static.joinpath("index.html").read_text(), content_type="text/html")

    async def asset(request):
        name = request.match_info["name"]
        kinds = {"app.js": "application/javascript", "app.css": "text/css"}
        if name not in kinds:
            raise web.HTTPNotFound()
        return web.Response(text=static.joinpath(name).read_text(), content_type=kinds[name])

    async def list_labs(request):
        return web.json_response(dict(labs=running(), changes=allow_changes))

    async def picture(request):
        lb = await off_loop(get_lab, request)
        key = lb.key(request.query.get("open"))
        svg, model, _ = await off_loop(lb.picture, key)
        return web.json_response(dict(svg=svg, model=model, collapsed=key is not None))

    async def counters(request):
        lb = await off_loop(get_lab, request)
        key = lb.key(request.query.get("open"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        cpu0 = countermod.pid_cpu()
        try:
            while True:
                if not await off_loop(lb.alive):
                    # its namespaces gone: close our sockets in them (an open socket would
                    # keep a taken-down lab's namespace, and its devices, alive)
                    if labs.get(lb.name) is lb:
                        labs.pop(lb.name)
                    lb.close()
                    await resp.write(b"event: gone\ndata: {}\n\n")
                    break
                data = await off_loop(lb.tick, key)
                data["cpu"] = round(countermod.pid_cpu() - cpu0, 3)
                await resp.write(f"data: {json.dumps(data)}\n\n".encode())
                await asyncio.sleep(1)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def node(request):
        from ..observe import show as showmod
        lb = get_lab(request)
        n = node_of(lb, request.match_info["node"])
        labmod.require_wired(lb.name, [n], lb.st)

        def collect():
            data = showmod.collect(lb.st, [n])
            data["nodes"][n]["about"] = showmod.about(lb.topo, lb.st, n)
            data["nodes"][n]["about_lines"] = showmod.about_lines(data["nodes"][n]["about"])
            nf = data["nodes"][n].get("netfilter")
            if nf is not None:          # the lines `nslab show NODE` prints, and what it left out
                data["nodes"][n]["netfilter_lines"] = showmod.netfilter_lines(nf) + \
                    [showmod.netfilter_summary(nf)] + nf.get("errors", [])
            return data
        return web.json_response(await off_loop(collect))

    async def trace(request):
        from ..observe import trace as tracemod
        lb = get_lab(request)
        body = await request.json()
        src, dst = str(body.get("src", "")), str(body.get("dst", ""))
        node_of(lb, src)
        if not (dst in lb.st.nodes or (dst.startswith("svc/") and lb.topo.cluster is not None
                                         and dst[4:] in lb.topo.cluster.services)):
            raise web.HTTPNotFound(text=f"lab {lb.name} has no node or service {dst!r}\n")
        proto = body.get("proto") or "icmp"
        if proto not in ("icmp", "tcp", "udp"):
            raise web.HTTPBadRequest(text="proto: icmp, tcp or udp\n")
        port = body.get("port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise web.HTTPBadRequest(text="port: 1 to 65535\n")
        result = await off_loop(tracemod.trace, lb.name, src, dst, proto, port, None, 1.0)
        return web.json_response(dict(result=result, steps=view.trace_steps(result, lb.drawing),
                                      complete=tracemod.complete(result)))

    async def capture_start(request):
        from ..observe import capture as capmod
        lb = get_lab(request)
        body = await request.json()
        n = node_of(lb, str(body.get("node", "")))
        iface = str(body.get("iface") or capmod.default_iface(lb.topo, n))
        if iface not in capmod.known_ifaces(lb.topo, n):
            raise web.HTTPBadRequest(text=f"{n} has no interface {iface!r}\n")
        bpf = str(body.get("filter") or "")
        if len(bpf) > 200 or any(w.startswith("-") for w in bpf.split()):
            raise web.HTTPBadRequest(text="filter: a tcpdump expression (no options), at most 200 characters\n")
        live = [c for c in captures.values() if not c.done]
        if len(live) >= MAX_CAPTURES:
            raise web.HTTPTooManyRequests(text=f"at most {MAX_CAPTURES} captures at once\n")
        cap = Capture(secrets.token_hex(6), lb, n, iface, bpf, folder)
        await off_loop(cap.start)
        captures[cap.id] = cap
        return web.json_response(dict(id=cap.id, where=cap.where))

    def get_capture(request) -> Capture:
        cap = captures.get(request.match_info["cid"])
        if cap is None:
            raise web.HTTPNotFound(text="no such capture\n")
        return cap

    async def capture_rows(request):
        cap = get_capture(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        sent = 0

        def wait():
            with cap.cond:
                cap.cond.wait_for(lambda: len(cap.rows) > sent or cap.done, timeout=1)
                return cap.rows[sent:], cap.done
        try:
            while True:
                rows, done = await off_loop(wait)
                for row in rows:
                    await resp.write(f"data: {json.dumps(row)}\n\n".encode())
                sent += len(rows)
                if done and not rows:
                    await resp.write(b"event: end\ndata: {}\n\n")
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def capture_stop(request):
        cap = get_capture(request)
        await off_loop(cap.stop)
        return web.json_response(dict(id=cap.id, rows=len(cap.rows)))

    async def capture_pcap(request):
        cap = get_capture(request)
        if not os.path.exists(cap.pcap):
            raise web.HTTPNotFound(text="no pcap yet\n")
        return web.FileResponse(cap.pcap, headers={
            "Content-Type": "application/vnd.tcpdump.pcap",
            "Content-Disposition": f'attachment; filename="{cap.lab}-{cap.where.replace(":", "-")}.pcap"'})

    async def link(request):
        from .. import shaping
        lb = get_lab(request)
        if not allow_changes:
            raise web.HTTPForbidden(text="read-only: start `nslab web --allow-changes` to change links\n")
        body = await request.json()
        target, action = str(body.get("target", "")), body.get("action")
        node, _, iface = target.partition(":")
        node_of(lb, node)
        from ..observe import capture as capmod
        if iface not in capmod.known_ifaces(lb.topo, node) or iface in ("any",):
            raise web.HTTPBadRequest(text=f"{node} has no interface {iface!r}\n")
        if action == "set":
            values = {k: str(v) for k, v in (body.get("values") or {}).items()
                      if k in ("rate", "delay", "jitter", "loss", "limit", "burst") and v not in (None, "")}
            cond, notice = await off_loop(shaping.set_conditions, lb.name, target, values)
            text = f"{target}: {cond.describe()}" + (f" (note: {notice})" if notice else "")
        elif action == "clear":
            await off_loop(shaping.clear, lb.name, target)
            text = f"{target}: no conditions"
        elif action in ("down", "up"):
            restored = await off_loop(labmod.set_link, lb.name, target, action == "up")
            text = f"{target}: {action}" + (f", {len(restored)} entries restored" if action == "up" else "")
        else:
            raise web.HTTPBadRequest(text="action: set, clear, down or up\n")
        labs.pop(lb.name, None)             # its picture shows conditions: draw it again
        lb.close()
        return web.json_response(dict(ok=True, text=text))

    async def warm(app):
        """Lay out each lab's first view before anyone asks (a 10,000-node lab's drawing
        takes seconds to build): the page's first render is then the browser's work."""
        async def one(name):
            try:
                lb = await off_loop(lab_named, name)
                await off_loop(lb.picture, lb.key(None))
            except Exception:           # a lab that went away meanwhile: the page will say
                pass
        warming.extend(asyncio.create_task(one(n)) for n in running())

    async def cleanup(app):
        for cap in captures.values():
            cap.stop()
        for lb in labs.values():
            lb.close()
        shutil.rmtree(folder, ignore_errors=True)

    app.router.add_get("/", page)
    app.router.add_get("/favicon.ico", _no_content)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/api/labs", list_labs)
    app.router.add_get("/api/lab/{lab}/picture", picture)
    app.router.add_get("/api/lab/{lab}/counters", counters)
    app.router.add_get("/api/lab/{lab}/node/{node}", node)
    app.router.add_post("/api/lab/{lab}/trace", trace)
    app.router.add_post("/api/lab/{lab}/capture", capture_start)
    app.router.add_get("/api/capture/{cid}/rows", capture_rows)
    app.router.add_post("/api/capture/{cid}/stop", capture_stop)
    app.router.add_get("/api/capture/{cid}/pcap", capture_pcap)
    app.router.add_post("/api/lab/{lab}/link", link)
    app.on_startup.append(warm)
    app.on_cleanup.append(cleanup)
    return app


def serve(bind: str = "127.0.0.1", port: int = 8080, lab: str | None = None, allow_changes: bool = False,
          say=lambda text: print(text, flush=True)) -> None:
    """Serve until Ctrl-C (or SIGTERM); then end the captures and close the counters' sockets."""
    if not 0 < port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, not {port}")
    try:
        if ipaddress.ip_address(bind).is_unspecified:
            raise UsageError(f"--bind {bind}: give the one address to serve on (the page answers only to a Host "
                             f"header naming the address it is bound to: the DNS rebinding guard)")
    except ValueError:
        if bind != "localhost":
            raise UsageError(f"--bind takes an IP address of this machine (or localhost), not {bind!r}") from None
    token = None if _loopback(bind) else secrets.token_urlsafe(18)
    if lab is not None and lab not in state.labs():
        raise UsageError(f"no lab named {lab!r} runs (`nslab ls` lists them)")
    app = make_app(bind, port, lab, token, allow_changes)
    # run_app prints its line once the socket listens: ours instead, with the token
    try:
        web.run_app(app, host=bind, port=port, print=lambda _: say(banner(bind, port, token, allow_changes)),
                    handle_signals=True, access_log=None, shutdown_timeout=2)
    except OSError as e:                # taken port, an address not of this machine
        raise NslabError(f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
    say("nslab web: stopped")


def banner(bind: str, port: int, token: str | None, allow_changes: bool) -> str:
    host = f"[{bind}]" if ":" in bind else bind
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    mode = "changes allowed (--allow-changes)" if allow_changes else "read-only"
    return f"nslab web: {url}  ({mode}; Ctrl-C to stop)"
