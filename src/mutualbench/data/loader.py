"""``DeviceLoader``: a whole split held on the training device as uint8, batched there.

Each epoch's order, flips and crop offsets are drawn at the start of the epoch from a
generator seeded by ``(seed, epoch)``, so an epoch is the same whether it is reached in one
run or after a resume. Pad-and-crop and flip are one gather from a strided view of every
crop window of the padded images (plus a mirrored copy when flipping: 2x the padded
split's memory), then one uint8->float copy and an in-place normalisation; there is no
Python work per image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_EPOCH_STREAM = 1
_SUBSET_STREAM = 2


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose stream is determined by the integer key (independent streams)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def balanced_subset_indices(labels: np.ndarray | torch.Tensor, n: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset of ``n`` indices with the classes as equal as possible
    (the first ``n % K`` classes get one extra); sorted."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    classes = np.unique(labels)
    if n <= 0 or n > len(labels):
        raise ValueError(f"subset size must be in 1..{len(labels)}, got {n}")
    g = seeded_generator(seed, _SUBSET_STREAM)
    base, extra = divmod(n, len(classes))
    chosen = []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        want = base + (1 if i < extra else 0)
        if want > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, a balanced subset of {n} needs {want}")
        perm = torch.randperm(len(idx), generator=g).numpy()
        chosen.append(idx[perm[:want]])
    return np.sort(np.concatenate(chosen))


class DeviceLoader:
    """Iterates ``(images, labels)`` batches of a uint8 ``[N, H, W, C]`` split on ``device``.

    Args:
        images, labels: the split (numpy or torch); copied to ``device`` once.
        batch_size: images per batch.
        shuffle: a new seeded order each epoch (else the stored order).
        flip: random horizontal flip with probability 1/2.
        crop_padding: zero-pad by this many pixels and take a random crop of the original
            size (0: no crop).
        mean, std: per-channel normalisation in [0, 1] units (default: none).
        seed: the seed of every random draw (order, flips, crops, subset).
        drop_last: drop a final partial batch.
        subset: keep a fixed, seeded, class-balanced subset of this many images.
        channels_last: return batches in channels-last memory format.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        flip: bool = False,
        crop_padding: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        drop_last: bool = False,
        subset: int | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        images_t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if images_t.dtype != torch.uint8 or images_t.ndim != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {images_t.dtype} {tuple(images_t.shape)}")
        if subset is not None:
            idx = torch.from_numpy(balanced_subset_indices(labels_t.numpy(), subset, seed))
            images_t, labels_t = images_t[idx], labels_t[idx]
        self.device = torch.device(device)
        self.images = images_t.to(self.device).contiguous()
        self.labels = labels_t.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle, self.flip, self.crop_padding = shuffle, flip, int(crop_padding)
        self.seed, self.drop_last = seed, drop_last
        self.channels_last, self.dtype = channels_last, dtype
        c = self.images.shape[-1]
        # the normalisation constants in float64 for float64 batches (float32 batches keep
        # float32 constants: their rounding is the stored float32 runs')
        work = torch.float64 if dtype == torch.float64 else torch.float32
        mean_t = torch.tensor(mean if mean is not None else [0.0] * c, dtype=work)
        std_t = torch.tensor(std if std is not None else [1.0] * c, dtype=work)
        self._windows = self._crop_windows() if (flip or self.crop_padding) else None
        self._zeros = torch.zeros(batch_size, dtype=torch.int64, device=self.device)
        # x = (u8 / 255 - mean) / std  ==  u8 * scale + shift
        self._scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1).to(self.device, dtype)
        self._shift = (-mean_t / std_t).view(1, c, 1, 1).to(self.device, dtype)
        self._next_epoch = 0

    def _crop_windows(self) -> torch.Tensor:
        """A view ``[F, N, 2p+1, 2p+1, H, W, C]`` of every crop window of the zero-padded
        images (F = 2 with a mirrored copy when flipping): a batch's crops and flips are then
        one gather indexed by (flip, image, dy, dx)."""
        p = self.crop_padding
        padded = F.pad(self.images, (0, 0, p, p, p, p))
        stacked = torch.stack([padded, padded.flip(2)]) if self.flip else padded[None]
        f, n, hp, wp, c = stacked.shape
        h, w = hp - 2 * p, wp - 2 * p
        s = stacked.stride()
        return stacked.as_strided((f, n, 2 * p + 1, 2 * p + 1, h, w, c),
                                  (s[0], s[1], s[2], s[3], s[2], s[3], s[4]))

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter()`` produces (for resuming)."""
        self._next_epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch
        self._next_epoch += 1
        return self.epoch_batches(epoch)

    def _epoch_draws(self, epoch: int):
        n = self.num_samples
        g = seeded_generator(self.seed, _EPOCH_STREAM, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        flips = torch.rand(n, generator=g) < 0.5 if self.flip else None
        p = self.crop_padding
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=g) if p else None
        to = lambda t: None if t is None else t.to(self.device, non_blocking=True)  # noqa: E731
        return to(order), to(flips), to(offsets)

    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, flips, offsets = self._epoch_draws(epoch)
        n, bs, p = self.num_samples, self.batch_size, self.crop_padding
        h, w, c = self.images.shape[1:]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        stop = n - n % bs if self.drop_last else n
        for start in range(0, stop, bs):
            idx = order[start : start + bs]
            if self._windows is None:
                x = self.images[idx]  # [B, H, W, C] uint8
            else:
                b = idx.shape[0]
                oy = offsets[start : start + bs, 0] if offsets is not None else self._zeros[:b]
                ox = offsets[start : start + bs, 1] if offsets is not None else self._zeros[:b]
                if flips is not None:
                    f = flips[start : start + bs]
                    ox = torch.where(f, 2 * p - ox, ox)  # the same crop, read from the mirrored copy
                    x = self._windows[f.long(), idx, oy, ox]
                else:
                    x = self._windows[0, idx, oy, ox]
            out = torch.empty((idx.shape[0], c, h, w), dtype=self.dtype, device=self.device,
                              memory_format=fmt)
            out.copy_(x.permute(0, 3, 1, 2))  # uint8 -> float and HWC -> CHW in one pass
            yield out.mul_(self._scale).add_(self._shift), self.labels[idx]
