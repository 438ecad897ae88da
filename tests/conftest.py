"""Shared fixtures: tiny synthetic image data, and the shared CIFAR-10 copy when present."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg75.tar.gz"
SHARED_CIFAR_SHA256 = "c39db14690feee235e4f88817d1caff0707fb1d9ac3ad6f76efe99d56eafb5a2"


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_files(classes=("cat", "dog", "emu"), n_train=4, n_test=2, size=8, seed=0):
    """{relative path: png bytes} for a class-per-folder tree of random images."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            for i in range(n):
                files[f"{split}/{c}/{i:04d}.png"] = png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data-root"
    root.mkdir()
    return root


@pytest.fixture
def tiny_files():
    return synthetic_files()


@pytest.fixture(scope="session")
def shared_cifar(tmp_path_factory):
    """The shared CIFAR-10 JPEG copy, decoded once per test session into a temporary root."""
    if not SHARED_CIFAR.exists():
        pytest.skip(f"shared CIFAR-10 copy not found at {SHARED_CIFAR}")
    from mutualbench.data import load_dataset

    root = Path(os.environ.get("MUTUALBENCH_TEST_DATA_ROOT") or tmp_path_factory.mktemp("cifar-root"))
    return load_dataset(SHARED_CIFAR, root=root)
