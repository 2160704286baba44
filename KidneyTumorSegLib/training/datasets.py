"""The samplers as a torch IterableDataset, so DataLoader workers can keep a GPU busy.

Each (epoch, rank, worker) draws from its own generator seeded by
``(seed, network, epoch, rank, worker)``: ranks see different samples (the role a
DistributedSampler plays for map-style data), an epoch is reproducible, and a resumed run draws
exactly what an uninterrupted one would have drawn. Steps are split between workers in whole
batches, so every batch is full. Workers share the cached cases copy-on-write (fork) and run
single-threaded, leaving the cores to the main process.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class SampleStream(IterableDataset):
    def __init__(self, sampler, steps: int, batch_size: int, seed_parts: tuple[int, ...], rank: int = 0):
        super().__init__()
        self.sampler = sampler
        self.steps = int(steps)
        self.batch_size = int(batch_size)
        self.seed_parts = tuple(int(s) for s in seed_parts)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        steps = self.steps // workers + (1 if worker < self.steps % workers else 0)
        rng = np.random.default_rng([*self.seed_parts, self.epoch, self.rank, worker])
        for _ in range(steps * self.batch_size):
            s = self.sampler.sample(rng, augment=True)
            yield torch.from_numpy(np.ascontiguousarray(s.image)), torch.from_numpy(np.asarray(s.target))


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def make_loader(stream: SampleStream, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    workers = max(0, min(int(workers), stream.steps)) if stream.steps else 0
    return DataLoader(
        stream,
        batch_size=stream.batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def batches(samples: list, batch_size: int):
    """A fixed sample list (validation) as stacked tensor batches."""
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        x = torch.from_numpy(np.stack([s.image for s in chunk]))
        y = torch.from_numpy(np.stack([np.asarray(s.target) for s in chunk]))
        yield x, y
