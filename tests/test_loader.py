import numpy as np
import pytest
import torch

from mutualbench.data import DeviceLoader, balanced_subset_indices


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)  # non-square on purpose
    labels = np.repeat(np.arange(5), 10)
    return images, labels


def batches(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def raw(x):
    """Undo the identity normalisation: back to [B, H, W, C] uint8 values."""
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def test_same_seed_same_batches_other_seed_other_order(split):
    make = lambda seed: DeviceLoader(*split, batch_size=8, seed=seed, flip=True, crop_padding=2)  # noqa: E731
    a, b, c = batches(make(1)), batches(make(1)), batches(make(2))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))


def test_epochs_differ_and_set_epoch_replays(split):
    loader = DeviceLoader(*split, batch_size=8, seed=0)
    e0, e1 = batches(loader), batches(loader)
    assert not torch.equal(torch.cat([y for _, y in e0]), torch.cat([y for _, y in e1]))
    replay = batches(loader, epoch=1)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(e1, replay, strict=True))


def test_every_image_once_per_epoch_and_lengths(split):
    images, labels = split
    loader = DeviceLoader(images, labels, batch_size=8, seed=3)
    out = batches(loader)
    assert len(out) == len(loader) == 7 and out[-1][0].shape[0] == 2
    seen = torch.cat([raw(x) for x, _ in out]).reshape(50, -1)
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, images.reshape(50, -1)))
    assert len(DeviceLoader(images, labels, batch_size=8, drop_last=True)) == 6


def test_no_augmentation_and_no_shuffle_gives_exact_pixels(split):
    images, labels = split
    x, y = next(iter(DeviceLoader(images, labels, batch_size=50, shuffle=False)))
    assert torch.equal(raw(x), torch.from_numpy(images)) and torch.equal(y, torch.from_numpy(labels))


def test_normalisation(split):
    images, labels = split
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    x, _ = next(iter(DeviceLoader(images, labels, batch_size=50, shuffle=False, mean=mean, std=std)))
    ref = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, ref, atol=1e-5)


def test_flip_only_gives_original_or_mirrored_images(split):
    images, labels = split
    x, _ = next(iter(DeviceLoader(images, labels, batch_size=50, shuffle=False, flip=True, seed=5)))
    got, src = raw(x), torch.from_numpy(images)
    flipped = [torch.equal(got[i], src[i].flip(1)) for i in range(50)]
    same = [torch.equal(got[i], src[i]) for i in range(50)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 10 < sum(flipped) < 40  # about half


def test_crop_only_gives_windows_of_the_zero_padded_image(split):
    images, labels = split
    p = 2
    x, _ = next(iter(DeviceLoader(images, labels, batch_size=50, shuffle=False, crop_padding=p, seed=7)))
    got = raw(x)
    padded = torch.nn.functional.pad(torch.from_numpy(images), (0, 0, p, p, p, p))
    offsets = set()
    for i in range(50):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(got[i], padded[i, dy:dy + 6, dx:dx + 5])]
        assert matches, f"image {i} is not a window of its padded original"
        offsets.update(matches)
    assert len(offsets) > 5  # offsets vary


def test_flip_and_crop_together(split):
    images, labels = split
    p = 1
    x, _ = next(iter(DeviceLoader(images, labels, batch_size=50, shuffle=False, crop_padding=p, flip=True, seed=1)))
    got = raw(x)
    padded = torch.nn.functional.pad(torch.from_numpy(images), (0, 0, p, p, p, p))
    for i in range(50):
        windows = [padded[i, dy:dy + 6, dx:dx + 5] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(got[i], w) or torch.equal(got[i], w.flip(1)) for w in windows)


def test_subset_is_balanced_fixed_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    a = balanced_subset_indices(labels, 200, seed=0)
    assert np.array_equal(a, balanced_subset_indices(labels, 200, seed=0))
    assert not np.array_equal(a, balanced_subset_indices(labels, 200, seed=1))
    assert np.bincount(labels[a]).tolist() == [20] * 10
    odd = balanced_subset_indices(labels, 23, seed=0)
    assert sorted(np.bincount(labels[odd], minlength=10).tolist()) == [2] * 7 + [3] * 3
    with pytest.raises(ValueError):
        balanced_subset_indices(labels, 5000, seed=0)


def test_loader_subset(split):
    loader = DeviceLoader(*split, batch_size=4, subset=20, seed=0)
    assert loader.num_samples == 20
    assert torch.bincount(torch.cat([y for _, y in loader])).tolist() == [4] * 5


def test_channels_last_option(split):
    x, _ = next(iter(DeviceLoader(*split, batch_size=4, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_rejects_non_uint8(split):
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(split[0].astype(np.float32), split[1], batch_size=4)
