"""Torch threads while a probe runs: a sensible count per process, restored afterwards.

torch starts one intra-op thread per core in every process. Under pytest-xdist each worker
then spins on every core, and on a shared machine a tiny forward pass can take 100x longer
than with one thread (OpenMP threads busy-wait for cores that other processes hold). During
a probe the count is set to the cores this process may use divided by the xdist workers,
and lowered to the cores other processes leave idle (1-minute load average), at least 1;
the user's own code outside probes keeps torch's setting. ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` (torch's usual variables) or the ``threads`` setting override the choice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

_ENV_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def probe_threads(
    setting: int | None,
    environ: Mapping[str, str] | None = None,
    load: float | None = None,
) -> int | None:
    """How many torch threads a probe uses, or None to leave torch's count alone.

    Args:
        setting: the ``threads`` setting; None means auto.
        environ: the environment (default ``os.environ``).
        load: the 1-minute load average (default ``os.getloadavg()``).

    Returns:
        ``setting`` when given; None when ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set
        (torch already honours them); else, with W xdist workers (1 without xdist) and C
        usable cores: min(C // W, idle // W), at least 1, where idle = C - (load - W) are the
        cores the other processes leave (the run's own W processes count in the load).
    """
    if setting is not None:
        return setting
    environ = os.environ if environ is None else environ
    if any(environ.get(name, "").strip() for name in _ENV_VARIABLES):
        return None
    workers = _positive_int(environ.get("PYTEST_XDIST_WORKER_COUNT")) or 1
    cores = usable_cores()
    if load is None:
        load = _load_average()
    idle = cores - max(0.0, load - workers)
    return max(1, min(cores // workers, int(idle) // workers))


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return 0.0


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` for the block, then restored."""
    import torch

    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _positive_int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    value = int(text)
    return value if value > 0 else None
