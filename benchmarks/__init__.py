"""Benchmarks: scripts that print side-by-side figures; see README.md."""

import platform


def cpu_name() -> str:
    """The processor's model name (lscpu's), for comparing figures only within one machine."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()
