"""Batches read and collated by DataLoader workers while the model trains on the previous ones.

The batches themselves are decided beforehand (``make_batches``, ``shard_batches``:
lists of utterance ids); the loader only reads them, in that order, from a start
position, so a resumed run continues at the exact batch.  A dataset here is
anything with ``dataset[utt] -> Example`` (SpeechDataset, TextDataset and their
wrappers), and ``collate`` turns the examples of a batch into tensors.

Workers are forked afresh for every pass over the batches (not persistent): a
dataset with per-epoch state (``set_epoch``: N-best targets drawn per epoch) is
set before the pass and the workers start with that state.  The loader has its
own random generator, so starting a pass draws nothing from torch's global one
and dropout and SpecAugment in the main process see the same random numbers as
without workers.  Nothing random happens in the workers.
"""

from __future__ import annotations

import signal
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from kdst.data.dataset import collate
from kdst.errors import KdstError


class BatchesFrom(Sampler[list[str]]):
    """The utterance ids of ``batches[start:]``, one batch at a time."""

    def __init__(self, batches: list[list[str]], start: int = 0):
        self.batches, self.start = batches, start

    def __iter__(self) -> Iterator[list[str]]:
        return iter(self.batches[self.start:])

    def __len__(self) -> int:
        return max(len(self.batches) - self.start, 0)


def _ignore_stop_signals(worker_id: int) -> None:
    # The main process decides when to stop: it finishes its step, saves, and then ends the workers.
    # A Ctrl-C or Slurm's SIGUSR1 reaches the workers too, and must not kill them under it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


class _Failed:
    """What a worker sends back instead of a batch when reading it raised a KdstError: torch would
    re-raise the error in the training process with the worker's traceback in its text."""

    def __init__(self, error: KdstError):
        self.message = str(error)


class _Examples:
    """``dataset[utt]``, with a user-fixable problem caught where it happens (maybe in a worker)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, utt: str):
        try:
            return self.dataset[utt]
        except KdstError as e:
            return _Failed(e)


def _collate(examples: list) -> dict | _Failed:
    failed = [e for e in examples if isinstance(e, _Failed)]
    return failed[0] if failed else collate(examples)


def batch_loader(dataset, batches: list[list[str]], *, start: int = 0, num_workers: int = 2,
                 device: torch.device = torch.device("cpu")) -> Iterator[dict]:
    """Collated batches ``batches[start:]`` of ``dataset``, read ahead by ``num_workers`` processes
    (0: in this process, when iterated); pinned for a fast copy to a GPU.  A KdstError while reading
    a batch is raised here, as the one line it is, whichever process read it."""
    loader = DataLoader(_Examples(dataset), batch_sampler=BatchesFrom(batches, start), collate_fn=_collate,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
                        # 2 batches per worker in flight: enough to hide reading, little memory
                        prefetch_factor=2 if num_workers > 0 else None,
                        generator=torch.Generator())
    for batch in loader:
        if isinstance(batch, _Failed):
            raise KdstError(batch.message)
        yield batch
