import io
import tarfile
import zipfile

import numpy as np
import pytest

from conftest import SHARED_CIFAR_SHA256, png_bytes, write_tar, write_tree
from mutualbench.data import DataError, load_dataset


def cache_files(root):
    return sorted((root / "cache").glob("*")) if (root / "cache").exists() else []


def test_tree_loads_with_sorted_classes_and_exact_pixels(tmp_path, data_root, tiny_files):
    src = write_tree(tmp_path / "tiny", tiny_files)
    ds = load_dataset(src, root=data_root)
    assert ds.name == "tiny" and ds.classes == ["cat", "dog", "emu"]
    assert ds.train_images.shape == (12, 8, 8, 3) and ds.train_images.dtype == np.uint8
    assert ds.counts() == {"train": [4, 4, 4], "test": [2, 2, 2]}
    from PIL import Image

    expected = np.asarray(Image.open(io.BytesIO(tiny_files["train/dog/0001.png"])))
    assert np.array_equal(ds.train_images[5], expected) and ds.train_labels[5] == 1


def test_archive_name_is_file_stem_and_second_load_reads_cache(tmp_path, data_root, tiny_files):
    src = write_tar(tmp_path / "tiny-set.tar.gz", tiny_files)
    first = load_dataset(src, root=data_root)
    second = load_dataset(src, root=data_root)
    assert first.name == "tiny-set" and not first.from_cache and second.from_cache
    assert second.cache_path == first.cache_path and first.sha256[:16] in first.cache_path.name
    for split in ("train", "test"):
        assert np.array_equal(first.split(split)[0], second.split(split)[0])
    assert second.mean == first.mean


def test_zip_and_wrapping_folder(tmp_path, data_root, tiny_files):
    zpath = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for rel, data in tiny_files.items():
            zf.writestr("wrapped/" + rel, data)
    ds = load_dataset(zpath, root=data_root)
    assert ds.counts()["train"] == [4, 4, 4]


def test_truncated_archive_fails_cleanly_and_leaves_no_cache(tmp_path, data_root, tiny_files):
    whole = write_tar(tmp_path / "whole.tar.gz", tiny_files).read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="corrupt or truncated.*expected layout"):
        load_dataset(broken, root=data_root)
    assert cache_files(data_root) == []


@pytest.mark.parametrize(
    "drop,match",
    [("test/", "no test/ images"), ("train/emu", "different classes")],
)
def test_wrong_layouts_name_the_problem(tmp_path, data_root, tiny_files, drop, match):
    files = {k: v for k, v in tiny_files.items() if not k.startswith(drop)}
    with pytest.raises(DataError, match=match):
        load_dataset(write_tar(tmp_path / "bad.tar.gz", files), root=data_root)
    assert cache_files(data_root) == []


def test_image_at_wrong_depth(tmp_path, data_root, tiny_files):
    files = dict(tiny_files, **{"train/stray.png": tiny_files["train/cat/0000.png"]})
    with pytest.raises(DataError, match="not at <split>/<class>/<image>"):
        load_dataset(write_tree(tmp_path / "t", files), root=data_root)


def test_undecodable_image_is_named(tmp_path, data_root, tiny_files):
    files = dict(tiny_files, **{"train/cat/0002.png": b"not a png"})
    with pytest.raises(DataError, match="cannot decode train/cat/0002.png"):
        load_dataset(write_tree(tmp_path / "t", files), root=data_root)
    assert cache_files(data_root) == []


def test_mixed_image_sizes_are_rejected(tmp_path, data_root, tiny_files):
    files = dict(tiny_files, **{"test/dog/0000.png": png_bytes(np.zeros((9, 9, 3), np.uint8))})
    with pytest.raises(DataError, match="share one size"):
        load_dataset(write_tree(tmp_path / "t", files), root=data_root)


@pytest.mark.parametrize("name", ["../evil.png", "/abs/train/cat/x.png", "train/../../x.png"])
def test_tar_slip_member_paths_are_refused(tmp_path, data_root, tiny_files, name):
    path = write_tar(tmp_path / "slip.tar.gz", tiny_files)
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in list(tiny_files.items()) + [(name, b"x")]:
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="unsafe member path"):
        load_dataset(path, root=data_root)
    assert not (tmp_path.parent / "evil.png").exists()


def test_zip_slip_member_paths_are_refused(tmp_path, data_root, tiny_files):
    zpath = tmp_path / "slip.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for rel, data in tiny_files.items():
            zf.writestr(rel, data)
        zf.writestr("../../evil.png", b"x")
    with pytest.raises(DataError, match="unsafe member path"):
        load_dataset(zpath, root=data_root)


def test_links_in_archives_are_refused(tmp_path, data_root, tiny_files):
    path = tmp_path / "link.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in tiny_files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("train/cat/9999.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DataError, match="link or device"):
        load_dataset(path, root=data_root)


def test_missing_source_and_unknown_suffix(tmp_path, data_root):
    with pytest.raises(DataError, match="not found: give cifar10, cifar100"):
        load_dataset(tmp_path / "nope.tar.gz", root=data_root)
    odd = tmp_path / "data.rar"
    odd.write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder or a .tar.gz"):
        load_dataset(odd, root=data_root)


def test_damaged_cache_is_rebuilt_not_trusted(tmp_path, data_root, tiny_files):
    src = write_tar(tmp_path / "t.tar.gz", tiny_files)
    ds = load_dataset(src, root=data_root)
    ds.cache_path.write_bytes(b"garbage")
    again = load_dataset(src, root=data_root)
    assert not again.from_cache and np.array_equal(again.train_images, ds.train_images)
    assert load_dataset(src, root=data_root).from_cache


def test_cifar_download_failure_points_at_local_files(monkeypatch, data_root):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="point --data at local files"):
        load_dataset("cifar10", root=data_root)


def test_channel_stats_match_numpy():
    from mutualbench.data.sources import channel_stats

    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    f = x.reshape(-1, 3) / 255.0
    assert np.allclose(mean, f.mean(0), atol=1e-6) and np.allclose(std, f.std(0), atol=1e-6)


@pytest.mark.cifar
def test_shared_cifar_copy(shared_cifar):
    ds = shared_cifar
    assert ds.name == "cifar10-jpeg75" and ds.sha256 == SHARED_CIFAR_SHA256
    assert len(ds.train_labels) == 50_000 and len(ds.test_labels) == 10_000
    assert ds.counts() == {"train": [5000] * 10, "test": [1000] * 10}
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    assert ds.train_images.shape[1:] == (32, 32, 3)
    assert np.allclose(ds.mean, (0.4913, 0.4821, 0.4465), atol=2e-4)  # the data README's figures
