"""Worker threads that each enter a lab namespace and run the same loop:
the load generators' common frame (http_engine.py, dns_traffic.py). The
first failure in any thread is raised in the caller's, as it was: a
TracerError unchanged, anything else as a LabError naming the pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tracer import netns as nsmod
from tracer.errors import LabError, TracerError


@dataclass
class WorkTally:
    """What the workers of one run share: the next piece of work to take,
    and the first failure (after which no worker takes more). The load
    generators' tallies add their counts to it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    next_index: int = 0
    fatal: BaseException | None = None

    def take(self, total: int) -> bool:
        """Claim the next of `total` pieces of work; False when none is left."""
        with self.lock:
            if self.next_index >= total or self.fatal is not None:
                return False
            self.next_index += 1
            return True

    def stop(self, exc: BaseException) -> None:
        """A worker failed: the others take no more."""
        with self.lock:
            self.fatal = self.fatal or exc


def run_in_netns(netns: str, threads: int, loop: Callable[[], None], *, what: str,
                 on_failure: Callable[[BaseException], None] = lambda exc: None) -> float:
    """Run loop() in `threads` threads inside netns; the seconds they took.
    on_failure(exc) is called in the failing thread (to stop the others'
    loops early)."""
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            path = nsmod.resolve(netns)
            want = nsmod.inode(path)
            with nsmod.entered(path):
                # Never send traffic from the host's namespace by mistake.
                if nsmod.current_inode() != want:
                    raise LabError(f"could not enter {netns}")
                loop()
        except BaseException as exc:  # surfaces in the caller's thread
            with lock:
                failures.append(exc)
            on_failure(exc)

    pool = [threading.Thread(target=worker, name=f"lab-{what}-{i}", daemon=True)
            for i in range(max(threads, 1))]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        first = failures[0]
        if isinstance(first, TracerError):
            raise first
        raise LabError(f"{what} worker failed: {first}") from first
    return elapsed
