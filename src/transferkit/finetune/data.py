"""Training data: seeded per-image augmentation, resumable (and distributed) sampling.

Randomness never comes from a worker's or the process's running RNG state: image ``i`` in epoch
``e`` is augmented under the seed ``(seed, e, i)`` and the order of epoch ``e`` comes from
``seed + e``. A run resumed mid-epoch therefore sees exactly the batches an uninterrupted run sees,
with any number of DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from transferkit.data.imageset import ImageSet

log = logging.getLogger(__name__)


def item_seed(seed: int, epoch: int, index: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(index) * 104_729) % (2**63 - 1)


class DecodedImages:
    """Decodes each image once (JPEG draft mode) and keeps it in memory, shorter side ``short_side``.

    The CPU trick for ``strategy="full"``: decoding a 500x375 JPEG costs about as much as the
    augmentation itself, and would otherwise repeat every epoch.
    """

    def __init__(self, paths, short_side: int, cache: bool = True, decode_options: dict | None = None) -> None:
        self.paths = list(paths)
        self.short_side = int(short_side)
        self.cache = cache
        self.decode_options = dict(decode_options or {})
        self._store: dict[int, object] = {}

    def get(self, index: int):
        img = self._store.get(index)
        if img is not None:
            return img.copy()
        from PIL import Image

        from transferkit.data.decode import open_rgb

        img = open_rgb(self.paths[index], draft_size=self.short_side, **self.decode_options)
        w, h = img.size
        if self.cache and min(w, h) > self.short_side:
            scale = self.short_side / min(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        if self.cache:
            self._store[index] = img
            return img.copy()
        return img


class AugmentedImages(Dataset):
    """``(pixels01, label)`` pairs; the transform runs under a seed fixed by (seed, epoch, index)."""

    def __init__(self, images: ImageSet, transform: Callable, *, seed: int = 0, short_side: int = 256, cache_decoded: bool = True) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.decoded = DecodedImages(images.paths, short_side, cache=cache_decoded, decode_options=images.decode_options)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = self.decoded.get(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, index))
            x = self.transform(img)
        return x, int(self.images.labels[index])


class TensorItems(Dataset):
    """``(tensor, label)`` from in-memory tensors (cached activations); ``views`` picks one per epoch."""

    def __init__(self, data: torch.Tensor, labels: np.ndarray, *, seed: int = 0) -> None:
        # data: [V, N, ...] (V views of N items)
        self.data = data
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.data.shape[1]

    def __getitem__(self, index: int):
        views = self.data.shape[0]
        view = 0 if views == 1 else int(np.random.default_rng(item_seed(self.seed, self.epoch, index)).integers(views))
        return self.data[view, index], self.labels[index]


class EpochSampler(Sampler[int]):
    """Seeded order per epoch, sharded across processes, resumable at a batch position.

    Uniform order is torch's :class:`~torch.utils.data.DistributedSampler` (also with one
    process); with ``weights`` the epoch draws ``len(dataset)`` indices with replacement in
    proportion to the weights (class-imbalance handling), then shards the same way.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, weights: np.ndarray | None = None) -> None:
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0
        self.skip = 0
        self._dist = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, skipping its first ``skip`` indices (already trained on before a resume)."""
        self.epoch = int(epoch)
        self.skip = int(skip)
        self._dist.set_epoch(epoch)

    def epoch_indices(self) -> list[int]:
        if self.weights is None:
            return list(self._dist)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.size, replacement=True, generator=g).tolist()
        per_rank = -(-self.size // self.world_size)
        drawn += drawn[: per_rank * self.world_size - len(drawn)]
        return drawn[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, -(-self.size // self.world_size) - self.skip)


def balanced_weights(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-sample weights, per-class weights) inversely proportional to class frequency."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    class_w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return class_w[labels], class_w
