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


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``), share the cores among the workers:
    each worker, and every CLI subprocess it starts, gets cores / workers intra-op threads
    instead of all of them (N workers x N threads on N cores spend their time waiting)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if not os.environ.get("PYTEST_XDIST_WORKER") or workers < 1:
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


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
    """The shared CIFAR-10 JPEG copy, decoded once per test session into a temporary root
    ($MUTUALBENCH_TEST_DATA_ROOT when set). Under pytest-xdist the workers share one root:
    the first to take its lock decodes, the others read the cache it wrote."""
    if not SHARED_CIFAR.exists():
        pytest.skip(f"shared CIFAR-10 copy not found at {SHARED_CIFAR}")
    import fcntl

    from mutualbench.data import load_dataset

    root = os.environ.get("MUTUALBENCH_TEST_DATA_ROOT")
    if root:
        root = Path(root)
    else:  # a worker's base temp lies in the session's own folder, which every worker shares
        base = tmp_path_factory.getbasetemp()
        root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cifar-root"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".decode-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return load_dataset(SHARED_CIFAR, root=root)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """A 32x32, 3-class data set (30 train / 9 test images per class) as a tar.gz, with
    a session data root: (archive path, data root)."""
    base = tmp_path_factory.mktemp("tiny-cifar")
    rng = np.random.default_rng(1)
    files = {}
    for split, n in (("train", 30), ("test", 9)):
        for label, c in enumerate(("ant", "bee", "cow")):
            for i in range(n):
                img = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                img[..., label] += 120  # a learnable colour cue
                files[f"{split}/{c}/{i:03d}.png"] = png_bytes(img)
    root = base / "root"
    root.mkdir()
    return write_tar(base / "tiny-cifar.tar.gz", files), root


def run_config(method="individual", data=None, **overrides):
    """A complete, tiny config for ``Runner.run``; ``overrides`` are dotted keys."""
    from mutualbench.core.config import default_config

    config = default_config()
    config.update(method=method, device="cpu")
    config["data"].update(source=str(data), batch_size=16)
    # the blog's settings, which these tests were written for (not the package defaults)
    config["loss"]["reduction"] = "sum"
    config["kd"]["temperature"] = 1.0
    config["teacher"]["arch"] = "seed_vgg_teacher"
    for key in ("train", "hint"):
        config[key]["epochs"] = 2
    config["teacher"]["train"]["epochs"] = 2
    for key, value in overrides.items():
        node = config
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return config


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (``tests/slurm_cluster.py``: munged, slurmctld, slurmd on
    this host, no GPUs, accounting off), started once per test session and stopped by PID at
    its end; ``SLURM_CONF`` points at it meanwhile. Skips where SLURM is not installed."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from slurm_cluster import SlurmCluster, missing

    why = missing()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    saved = os.environ.get("SLURM_CONF")
    cluster.start()
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
