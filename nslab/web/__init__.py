"""`nslab web`: the running labs as a live page (issue 22).

view.py      what is drawn: `nslab graph`'s drawing (observe/graph.py) rendered by graphviz
             to SVG with ids, big labs with their groups collapsed, trace steps on it
counters.py  per-link packet and byte rates, one netlink dump per namespace per tick
server.py    the aiohttp server: the page, its JSON and server-sent events, the guards
static/      the page: HTML, CSS and small JavaScript of our own over graphviz's SVG
"""
