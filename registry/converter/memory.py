"""The converter child's memory: given back between the stages of a conversion, and measured at each.

A conversion holds the weights once per stage (freeze, the restored graph's run, the frozen graph's
run), so what one stage freed must leave the process before the next allocates.  The request's
``memory_trace`` (``benchmarks/conversion_memory.py``) records each stage's resident memory in the
result.  No TensorFlow here.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

M_MMAP_THRESHOLD = -3


def unmap_freed_memory() -> None:
    """Allocations of 1 MiB or more get mappings of their own, which go back to the kernel when freed.
    glibc's default threshold rises to 32 MiB as big blocks are freed, after which a freed variable
    stays in the heap of the thread that allocated it, resident while the next stage allocates anew."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


class MemoryTrace:
    """Resident memory at each stage of a conversion, for ``benchmarks/conversion_memory.py`` (the request's
    ``memory_trace``).  Each stage's peak is the kernel's (``VmHWM``), reset after each mark where the kernel
    lets a process do so (``/proc/self/clear_refs``; a sandboxed child that changed user may not), else the
    peak so far."""

    def __init__(self) -> None:
        self.stages: list[dict] = []
        self.per_stage = True
        self.peak = 0

    @staticmethod
    def status() -> dict[str, int]:
        figures = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmPeak"):
                figures[key] = int(value.split()[0]) * 1024
        return figures

    def mark(self, stage: str) -> None:
        figures = self.status()
        self.peak = max(self.peak, figures["VmHWM"])
        self.stages.append({"stage": stage, "rss_bytes": figures["VmRSS"], "peak_rss_bytes": figures["VmHWM"]})
        if self.per_stage:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
            except OSError:
                self.per_stage = False

    def record(self) -> dict:
        return {"stages": self.stages, "peak_rss_bytes": self.peak, "peaks": "per stage" if self.per_stage
                else "cumulative", "address_space_peak_bytes": self.status()["VmPeak"]}


def no_mark(stage: str) -> None:
    """No memory trace: the stages go unmeasured."""
