"""limits.raise_nofile_soft_limit (what mutation testing found untested): from a lower soft
limit to the hard one, and left alone where they are equal.  In this process (so coverage
and mutmut see it): only the soft limit is lowered, and never below what is open."""
from __future__ import annotations

import os
import resource

from nslab.model import limits


def test_the_soft_limit_rises_to_the_hard_one_and_equal_ones_stay():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(hard, max(len(os.listdir("/proc/self/fd")) + 64, 256))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        assert limits.raise_nofile_soft_limit() == (hard, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert limits.raise_nofile_soft_limit() == (hard, hard)          # equal: nothing to do
        assert limits.nofile_hard_limit() == (None if hard == resource.RLIM_INFINITY else hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert low < hard, "the hard limit is too low to test raising the soft one"
