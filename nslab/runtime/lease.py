"""An agent's etcd lease kept alive from a process of its own (coord.KeepAlive starts it).

The agent's builds hold its interpreter's GIL for seconds at a time on a busy machine (the
garbage collector's full passes over a big compile); a thread of the agent could not
renew in time.  This process does nothing else: it renews the lease every third of its
TTL (coord.renew) while its parent, the agent, lives, and exits when the agent is gone
(the lease then expires, as a dead machine's must).  A lease lost: one line saying why on
stdout, exit 1.  SIGTERM (the agent stopping): exit 0.

    python3 -m nslab.runtime.lease ENDPOINT LEASE_HEX TTL PARENT_PID
TLS files come from $NSLAB_ETCD_CA, $NSLAB_ETCD_CERT and $NSLAB_ETCD_KEY.
"""
from __future__ import annotations

import os
import signal
import sys

from nslab import coord


def main(argv: list[str]) -> int:
    endpoint, lease, ttl, parent = argv[0], int(argv[1], 16), int(argv[2]), int(argv[3])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    etcd = coord.Etcd(endpoint, ca=os.environ.get("NSLAB_ETCD_CA"), cert=os.environ.get("NSLAB_ETCD_CERT"),
                      key=os.environ.get("NSLAB_ETCD_KEY"))
    reason = coord.renew(etcd, lease, ttl, alive=lambda: os.getppid() == parent)
    if reason is None:
        return 0
    print(reason, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
