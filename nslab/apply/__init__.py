"""Apply: execute a plan in the kernel (netlink in-process, namespaces, iptables-restore,
containers).  applier.Applier is the engine; netlink.py the wire encoding."""
