"""The allocator setting really returns freed chunk-sized arrays to the system."""

import subprocess
import sys

import pytest

# Free a large block (glibc then raises its mmap threshold to that size), allocate many
# chunk-sized arrays, free all but the newest, and report the resident size in MB.
PATTERN = """
import numpy as np
def resident_mb():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
big = np.ones(24 << 20, np.uint8)
del big
held = [np.ones(8 << 20, np.uint8) for _ in range(24)]
newest = held[-1]
del held
print(resident_mb())
"""

SETUPS = {
    "none": "",
    "function": "from streamnorm.allocator import release_memory_promptly\n"
    "assert release_memory_promptly()\n",
    "command line": "from streamnorm.cli import main\n"
    "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n",
}

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's allocator is Linux-only"
)


def resident_after_pattern(setup: str) -> float:
    completed = subprocess.run(
        [sys.executable, "-c", setup + PATTERN], capture_output=True, text=True, check=True
    )
    return float(completed.stdout.strip().splitlines()[-1])


def test_freed_arrays_leave_the_process_once_the_threshold_is_fixed():
    kept = resident_after_pattern(SETUPS["none"])
    # 23 freed arrays of 8 MB: without the setting they stay resident.
    assert kept > 150
    for name in ("function", "command line"):
        released = resident_after_pattern(SETUPS[name])
        assert released < kept - 120, (name, released, kept)
