"""A training sampler whose index stream can be continued where an interrupted run stopped."""

import itertools

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "find_resumable_sampler"]


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's TrainingSampler (the same infinite, seeded, per-process stream) that first
    skips ``start`` indices of this process's stream. Its seed is checkpointed (``state_dict``),
    so a resumed run with ``start = iterations done * images per process`` reads the batches an
    uninterrupted run would have read. ``start`` must be set before the loader is iterated."""

    def __init__(self, size: int, shuffle: bool = True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self.start, None)

    def state_dict(self) -> dict:
        return {"seed": self._seed}

    def load_state_dict(self, state: dict) -> None:
        self._seed = int(state["seed"])


def find_resumable_sampler(loader):
    """The ResumableTrainingSampler inside a detectron2 train loader (DataLoader, aspect-ratio
    grouping, ToIterableDataset: each has ``.dataset`` / ``.sampler``), or None."""
    obj = loader
    for _ in range(8):
        if obj is None:
            return None
        for cand in (obj, getattr(obj, "sampler", None)):
            if isinstance(cand, ResumableTrainingSampler):
                return cand
        obj = getattr(obj, "dataset", None)
    return None
