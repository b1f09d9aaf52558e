"""Batch iterators shared by every dataset: order, sharding, prefetch, position.

A dataset supplies ``load(indices) -> batch`` over examples ``0..N-1``; the
classes here decide which indices make each batch:

- ``TrainBatches``: infinite; epoch ``e`` visits a permutation that is a pure
  function of ``(seed, e)``; the last partial batch is dropped. Its position
  is ``(epoch, index)`` alone, so ``load_state_dict`` resumes exactly and at
  once: buffered batches are discarded and recomputed, never trusted.
- ``EvalBatches``: finite and re-iterable; every example once, in order, the
  last partial batch kept (``limited(n)``: n batches spread over the split).

With ``world_size > 1`` every global batch is cut into ``world_size``
contiguous slices and rank ``r`` gets slice ``r``: the ranks' batches are
disjoint and, concatenated in rank order, equal the ``world_size=1`` batch.
"""

from __future__ import annotations

import copy as _copy
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from craft.data.seeds import NOT_CONTENT, derive_seed, fingerprint_of, options_fingerprint  # noqa: F401 (re-exported)
from craft.words import plural

Batch = dict[str, Tensor]
Load = Callable[[Tensor], Batch]
"""``load(indices (b,) int64) -> batch`` whose tensors have ``b`` rows, in that order."""

def epoch_order(num_examples: int, seed: int, epoch: int) -> Tensor:
    """The permutation ``(num_examples,)`` int64 that epoch ``epoch`` visits."""
    generator = torch.Generator().manual_seed(derive_seed("epoch", seed, epoch))
    return torch.randperm(num_examples, generator=generator)


def shard_size(batch_size: int, world_size: int, rank: int) -> int:
    """Each rank's share of a global batch; raises when it would not be equal."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if batch_size < 1:
        raise ValueError(f"data.batch_size must be positive, got {batch_size}")
    if batch_size % world_size:
        raise ValueError(
            f"data.batch_size={batch_size} (the global batch) does not divide by world_size={world_size}; "
            f"use a multiple of {world_size}"
        )
    return batch_size // world_size


def normalize(images: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std``.

    ``mean``/``std`` hold one value (for every channel) or one per channel.
    """
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), mean, std, inplace=True)


class _Batches:
    """What both iterators hold: this rank's share of the batch, the classes, the loader.

    ``batch_size`` is the global batch; ``self.batch_size`` is this rank's share.
    With an ``executor``, up to ``prefetch`` batches load ahead in its threads
    (the iterator owns it: ``close()`` shuts it down).
    """

    def __init__(
        self,
        load: Load,
        *,
        batch_size: int,
        classes: list[str],
        rank: int,
        world_size: int,
        executor: Executor | None,
        prefetch: int,
        examples: Sequence[object] | None,
        fingerprint: str | Callable[[], str] | None = None,
    ) -> None:
        self.batch_size = shard_size(batch_size, world_size, rank)
        self._fingerprint = fingerprint
        self.global_batch_size = batch_size
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.examples = examples
        self.rank, self.world_size = rank, world_size
        self._load = load
        self._executor = executor
        self._prefetch = max(1, prefetch) if executor is not None else 0

    def fingerprint(self) -> str:
        """A short digest of the data behind these batches, the same on every rank that reads the same data.

        What the dataset passed in (a string, or a function computed here
        once: a folder's file names and sizes, a text's hash, the options of
        generated data); else the example count and classes alone. It does not
        depend on the rank, the batch size or the position.
        """
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self.total_examples, self.classes)
        return self._fingerprint

    def close(self) -> None:
        """Stop the loading threads; the iterator must not be used afterwards."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class TrainBatches(_Batches, Iterator[Batch]):
    """Infinite shuffled batches of ``load``; see the module docstring.

    Every batch has ``self.batch_size`` rows (this rank's share; see
    ``_Batches``). With ``pass_epoch``, it calls ``load(indices, epoch)`` (random
    augmentation). ``examples[i]`` says what index ``i`` is (a file path).
    ``order(epoch, positions (b,))``, when given, is the example indices at
    ``positions`` of epoch ``epoch``'s permutation, computed without building it
    (a token file has too many examples); by default a seeded ``randperm``.
    """

    def __init__(
        self,
        num_examples: int,
        load: Load,
        *,
        batch_size: int,
        classes: list[str],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        executor: Executor | None = None,
        prefetch: int = 0,
        examples: Sequence[object] | None = None,
        fingerprint: str | Callable[[], str] | None = None,
        pass_epoch: bool = False,
        order: Callable[[int, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(
            load, batch_size=batch_size, classes=classes, rank=rank, world_size=world_size,
            executor=executor, prefetch=prefetch, examples=examples, fingerprint=fingerprint,
        )
        self._pass_epoch = pass_epoch
        self._order = order
        if num_examples < batch_size:
            raise ValueError(
                f"the train split has {plural(num_examples, 'example')}, fewer than one batch "
                f"(data.batch_size={batch_size}); lower batch_size or add data"
            )
        self.num_examples = self.total_examples = num_examples
        self.batches_per_epoch = num_examples // batch_size
        self.seed = seed
        self._orders: dict[int, Tensor] = {}
        self._pending: deque[tuple[tuple[int, int], Future]] = deque()
        self.epoch, self.index = 0, 0

    # -- position ---------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "index"}``: the next batch is batch ``index`` of ``epoch``."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``: the next batch is the one an unbroken run would give."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
            raise ValueError(
                f"data position epoch={epoch}, index={index} does not fit this dataset "
                f"({self.batches_per_epoch} batches per epoch); was it saved with other data or batch_size?"
            )
        self._drop_pending()
        self.epoch, self.index = self._normal(epoch, index)

    def indices(self, epoch: int, index: int) -> Tensor:
        """This rank's example indices ``(self.batch_size,)`` of batch ``index`` of ``epoch``."""
        start = index * self.global_batch_size + self.rank * self.batch_size
        if self._order is not None:
            return self._order(epoch, torch.arange(start, start + self.batch_size))
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # keep the current epoch and the next (prefetch crosses over)
                del self._orders[min(self._orders)]
            self._orders[epoch] = epoch_order(self.num_examples, self.seed, epoch)
        return self._orders[epoch][start : start + self.batch_size]

    def _normal(self, epoch: int, index: int) -> tuple[int, int]:
        return (epoch + 1, 0) if index >= self.batches_per_epoch else (epoch, index)

    # -- iteration --------------------------------------------------------

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> Batch:
        if self._executor is None:
            batch = self._load_in(self.epoch, self.indices(self.epoch, self.index))
        else:
            self._fill()
            batch = self._pending[0][1].result()  # peek, then pop: a failed load raises again next time
            self._pending.popleft()
        self.epoch, self.index = self._normal(self.epoch, self.index + 1)
        if self._executor is not None:
            self._fill()  # keep ``prefetch`` batches in flight while the caller trains
        return batch

    def _fill(self) -> None:
        position = self._pending[-1][0] if self._pending else None
        while len(self._pending) < self._prefetch:
            position = (self.epoch, self.index) if position is None else self._normal(position[0], position[1] + 1)
            indices = self.indices(*position)  # in the caller's thread: ``indices`` caches the orders
            self._pending.append((position, self._executor.submit(self._load_in, position[0], indices)))

    def _load_in(self, epoch: int, indices: Tensor) -> Batch:
        return self._load(indices, epoch) if self._pass_epoch else self._load(indices)

    def _drop_pending(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    def close(self) -> None:
        self._drop_pending()
        super().close()


class EvalBatches(_Batches):
    """Every example once, in index order, the last partial batch kept.

    ``len()`` is the number of batches this rank yields. With ``world_size > 1``
    the global batch ``k`` is split into near-equal contiguous slices, so only
    the last batch differs between ranks; a rank whose slice of it is empty
    yields one batch fewer (reduce metrics once at the end, weighted by batch
    size, not per batch). ``num_examples`` counts this rank's examples.
    ``executor``, ``prefetch`` and ``examples`` are as for ``TrainBatches``.
    """

    def __init__(
        self,
        num_examples: int,
        load: Load,
        *,
        batch_size: int,
        classes: list[str],
        rank: int = 0,
        world_size: int = 1,
        executor: Executor | None = None,
        prefetch: int = 0,
        examples: Sequence[object] | None = None,
        fingerprint: str | Callable[[], str] | None = None,
    ) -> None:
        super().__init__(
            load, batch_size=batch_size, classes=classes, rank=rank, world_size=world_size,
            executor=executor, prefetch=prefetch, examples=examples, fingerprint=fingerprint,
        )
        self.total_examples = num_examples  # every rank's, together
        self._set_batches(torch.arange(num_examples))

    def _set_batches(self, indices: Tensor) -> None:
        """Read ``indices`` in global batches, this rank's slice of each (the last, partial one may leave it none)."""
        chunks = (c.tensor_split(self.world_size)[self.rank] for c in indices.split(self.global_batch_size))
        self._batches: list[Tensor] = [c for c in chunks if len(c)]
        self.num_examples = sum(len(b) for b in self._batches)

    def limited(self, batches: int) -> EvalBatches:
        """A copy that reads ``batches`` global batches (``train.eval_batches``) of examples spread evenly over
        the whole split: a folder's val images come class by class, so its first batches would hold few classes."""
        count = min(batches * self.global_batch_size, self.total_examples)
        copy = _copy.copy(self)
        copy._set_batches((2 * torch.arange(count) + 1) * self.total_examples // max(2 * count, 1))  # midpoints
        return copy

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[Batch]:
        if self._executor is None:
            return map(self._load, self._batches)
        return self._prefetched()

    def _prefetched(self) -> Iterator[Batch]:
        pending: deque[Future] = deque()
        upcoming = iter(self._batches)
        try:
            while True:
                while len(pending) < self._prefetch and (indices := next(upcoming, None)) is not None:
                    pending.append(self._executor.submit(self._load, indices))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:  # a loop that stops early must not leave threads decoding for nobody
            for future in pending:
                future.cancel()
