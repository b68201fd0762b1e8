"""A one-line progress bar on stderr."""
import sys
import time


class Progress:
    def __init__(self, total, enabled=True, stream=None):
        self.total, self.enabled, self.done, self.t0 = max(total, 1), enabled, 0, time.time()
        self.stream = stream or sys.stderr

    def update(self, done, label=""):
        self.done = done
        if not self.enabled:
            return
        frac = min(1.0, done / self.total)
        eta = (time.time() - self.t0) / max(done, 1e-9) * (self.total - done) if done else 0
        self.stream.write(f"\r[{'#' * int(30 * frac):30s}] {done}/{self.total} eta {eta:4.0f}s {label[:70]:70s}")
        self.stream.flush()

    def step(self, label=""):
        self.update(self.done + 1, label)

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
