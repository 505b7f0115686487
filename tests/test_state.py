"""Ownership record helpers that need no root."""
from __future__ import annotations

from nslab import state


def test_a_process_that_vanishes_while_being_read_counts_as_gone(monkeypatch):
    """Reading /proc/PID/stat of a process that exits between open() and read() raises
    ESRCH (ProcessLookupError); `down` must treat it as gone, not crash (seen in the VM
    stage when a tunnel daemon exited during teardown)."""
    class Vanishing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(state, "open", lambda *a, **k: Vanishing(), raising=False)
    assert state._zombie(12345) is True
    assert state.process_start_time(12345) is None
