"""nslab: network labs in Linux network namespaces.

    from nslab import Lab
    with Lab.up("spine-leaf", name="demo") as lab:       # a bundled topology, or a file path
        assert lab.ping("client", "web-worker3").ok

Importing the package imports nothing else (the CLI starts fast); `Lab` loads nslab.api
on first use.
"""
__all__ = ["Lab", "__version__"]


def __getattr__(name: str):
    if name == "Lab":
        from .api import Lab  # lazy: start-up
        return Lab
    if name == "__version__":
        from importlib.metadata import version  # lazy: start-up
        return version("nslab")
    raise AttributeError(f"module 'nslab' has no attribute {name!r}")
