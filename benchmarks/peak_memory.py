"""Peak resident memory of the current process, for the benchmarks (Linux only).

TensorFlow's CPU allocator reports no peak, so the benchmarks measure each pass in a
fresh process: reset the kernel's peak-RSS mark, run the pass, read the mark.
"""

from __future__ import annotations


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) and return the current RSS in MB.

    Without this, a peak reached while preparing the data would hide the pass's own.
    """
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status_mb("VmRSS")


def peak_rss() -> float:
    """The peak RSS (MB) since the last :func:`reset_peak_rss`."""
    return _status_mb("VmHWM")
