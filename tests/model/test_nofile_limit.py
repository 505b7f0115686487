"""limits.raise_nofile_soft_limit (what mutation testing found untested): from a low soft
limit to the hard one, and left alone where they are equal.  In a child process: the
limits are the process's own."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = r"""
import resource, sys
from nslab.model import limits
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
low = min(256, hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
print(limits.raise_nofile_soft_limit() == (hard, hard), resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard),
      hard > low)
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))        # equal: nothing to raise
print(limits.raise_nofile_soft_limit() == (200, 200), resource.getrlimit(resource.RLIMIT_NOFILE) == (200, 200),
      limits.nofile_hard_limit() == 200)
"""


def test_the_soft_limit_rises_to_the_hard_one():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.stdout.split() == ["True"] * 6, out.stdout + out.stderr
