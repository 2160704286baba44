"""Job lists run in worker processes: building phantoms and resampling masks are CPU-bound and
independent per case."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor


def parallel_map(fn, jobs: list, workers: int):
    """``fn`` over ``jobs`` in order, in ``workers`` processes when there is more than one job."""
    if workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(fn, jobs)
    else:
        yield from map(fn, jobs)
