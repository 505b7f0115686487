#!/usr/bin/env python3
"""`nslab web`'s first render of a big lab in headless Chromium (issue 22, item 2).

Generates `cluster:RACKS,NODES,PODS` (default 20,50,9: 1,000 nodes and 9,000 pods, 10,041
namespaces), serves its picture with nslab/web/server.py's app (the topology as a picture:
the lab is not brought up, so no counters), and opens the page in headless Chromium:

  prepare   server side, once: load the topology, build nslab graph's drawing, lay out
            the collapsed first view with dot (the server does this at start)
  first     page opened -> picture drawn (navigation start to the page's "drawn")
  open rack a click on one collapsed rack -> that rack drawn (its nodes and pods, by dot)
  counters  the per-tick cost of the live counters: measured on a lab that runs
            (--counters-shape, small: brought up and down here), per namespace read, and
            applied to the namespaces one tick reads in the big lab's collapsed view and
            with one rack open (a tick reads only the links drawn, each at one end)

    sudo python3 bench/web.py [--shape cluster:20,50,9] [--runs 3] [--port 18096]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nslab import lab as labmod  # noqa: E402
from nslab.web import server  # noqa: E402
from nslab.web.browser import chromium  # noqa: E402


def serve(app, port: int) -> None:
    from aiohttp import web
    loop = asyncio.new_event_loop()

    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    loop.run_until_complete(start())
    threading.Thread(target=loop.run_forever, daemon=True).start()


def wait(browser, script: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := browser.execute_script(script)):
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        time.sleep(0.05)
    return value


def counters_cost(shape: str, prefix: str = "wb") -> float:
    """Seconds one tick spends per namespace it reads, on a lab of `shape` that runs."""
    from nslab import state
    path = os.path.join(tempfile.mkdtemp(prefix="bench-web-"), "small.yaml")
    name = f"{prefix}-webctr-{os.getpid()}"
    nslab = [sys.executable, "-m", "nslab.cli"]
    subprocess.run(nslab + ["generate", shape, "-o", path, "--name", name], check=True, capture_output=True, cwd=ROOT)
    try:
        subprocess.run(nslab + ["up", path, "-q"], check=True, capture_output=True, cwd=ROOT)
        lab = server.Lab(name)
        links = lab.picture(None)[2]
        took, cpu, reads = [], [], 0
        for _ in range(20):
            c0 = time.process_time()
            data = lab.counters.tick(links)
            cpu.append(time.process_time() - c0)     # this process's CPU, the kernel's share too
            took.append(data["took"])
            reads = data["namespaces"]
            time.sleep(0.6)
        lab.close()
        best, used = sorted(took[1:])[len(took) // 2], sorted(cpu[1:])[len(cpu) // 2]   # the first opens sockets
        print(f"counters on {shape} ({len(state.load(name).nodes)} namespaces, running): {len(links)} links, "
              f"{reads} namespaces read per tick, median tick {1000 * best:.1f} ms wall, {1000 * used:.2f} ms CPU "
              f"({1e6 * used / reads:.0f} us CPU per namespace)")
        return used / reads
    finally:
        subprocess.run(nslab + ["down", name], capture_output=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="cluster:20,50,9")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--port", type=int, default=18096)
    ap.add_argument("--counters-shape", default="cluster:2,10,4", help="the lab brought up to time the counters")
    ap.add_argument("--lab-prefix", default="wb", help="the name of that lab starts with it")
    args = ap.parse_args()
    path = os.path.join(tempfile.mkdtemp(prefix="bench-web-"), "lab.yaml")
    subprocess.run([sys.executable, "-m", "nslab.cli", "generate", args.shape, "-o", path], check=True,
                   capture_output=True, cwd=ROOT)
    t0 = time.monotonic()
    topo = labmod.load(path)
    t1 = time.monotonic()
    lab = server.Lab(topo.name, topo=topo)
    t2 = time.monotonic()
    lab.picture(lab.key(None))
    t3 = time.monotonic()
    print(f"{args.shape}: {len(topo.nodes):,} namespaces, drawing {len(lab.drawing.nodes):,} boxes "
          f"and {len(lab.drawing.edges):,} edges; load {t1 - t0:.2f} s, drawing {t2 - t1:.2f} s, "
          f"first view laid out {t3 - t2:.2f} s (once, at server start)")
    serve(server.make_app(port=args.port, fixed={topo.name: lab}), args.port)
    browser = chromium()
    try:
        for run in range(1, args.runs + 1):
            browser.get("about:blank")
            browser.get(f"http://127.0.0.1:{args.port}/#{topo.name}")
            wait(browser, "return document.body.dataset.lab")
            ms = browser.execute_script("return performance.now()")
            inner = int(browser.execute_script("return document.body.dataset.renderMs"))
            nodes = browser.execute_script("return document.querySelectorAll('#graph g.node').length")
            print(f"run {run}: first render {ms / 1000:.2f} s, of which the picture (fetch, insert, wire) "
                  f"{inner / 1000:.2f} s ({nodes} boxes drawn, racks collapsed)")
        group = sorted(g for g in lab.drawing.groups if lab.drawing.groups[g].parent is None)[0]
        t = time.monotonic()
        browser.execute_script(f"document.getElementById('n/group:{group}')"
                               ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        wait(browser, f"return document.getElementById('g/{group}')")
        nodes = browser.execute_script("return document.querySelectorAll('#graph g.node').length")
        print(f"open {group}: {time.monotonic() - t:.2f} s ({nodes} boxes drawn; laid out on the first click)")
    finally:
        browser.quit()
    per_ns = counters_cost(args.counters_shape, args.lab_prefix)
    for what, key in (("collapsed", lab.key(None)), (f"{group} open", frozenset([group]))):
        links = lab.picture(key)[2]
        reads = {l[l["read"]][0] for l in links} | {l["underlay"][0] for l in links if l["underlay"]}
        print(f"counters at {len(topo.nodes):,} namespaces, {what}: {len(links)} links drawn, {len(reads)} "
              f"namespaces read per tick: {100 * per_ns * len(reads):.2f} % of a core (from the CPU per namespace)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
