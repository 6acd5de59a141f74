"""Peak memory of a block of code: CUDA's allocator high-water mark, or the CPU resident set
sampled by a thread (``ru_maxrss`` cannot be reset between rows of a benchmark)."""

import os
import threading

import torch

__all__ = ["PeakMemory", "sync"]


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Context manager: ``peak_bytes`` after exit (CUDA max allocated, or the sampled CPU RSS
    high-water mark, both absolute) and ``start_bytes`` (at entry)."""

    def __init__(self, device: str, interval: float = 0.002):
        self.cuda = torch.device(device).type == "cuda"
        self.interval = interval
        self.peak_bytes = self.start_bytes = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
            return self
        self.start_bytes = self.peak_bytes = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
        return False
