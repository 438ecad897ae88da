import io
import os
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


# ----------------------------------------------------------------------------- class folders without images


def _tar_of_tree(tree, path):
    with tarfile.open(path, "w:gz") as tar:  # like `tar czf`: folder entries included
        tar.add(tree, arcname=tree.name)
    return path


def _source_with_empty_class(tmp_path, kind, splits, files):
    tree = write_tree(tmp_path / "set", files)
    for split in splits:
        (tree / split / "zebra").mkdir()
    if kind == "tree":
        return tree
    if kind == "tar":
        return _tar_of_tree(tree, tmp_path / "set.tar.gz")
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
        for split in splits:
            zf.writestr(f"{split}/zebra/", b"")
    return zpath


@pytest.mark.parametrize("kind", ["tree", "tar", "zip"])
def test_class_folder_empty_in_both_splits_is_refused(tmp_path, data_root, tiny_files, kind, capsys):
    from mutualbench.cli import main

    src = _source_with_empty_class(tmp_path, kind, ("train", "test"), tiny_files)
    assert main(["data", str(src), "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {src}: class folder 'zebra' has no images in train/ or test/")
    assert "remove the folder" in err
    assert cache_files(data_root) == []


@pytest.mark.parametrize("kind", ["tree", "tar"])
@pytest.mark.parametrize("split,other", [("test", "train"), ("train", "test")])
def test_class_folder_empty_in_one_split_is_refused(tmp_path, data_root, kind, split, other, capsys):
    from conftest import synthetic_files
    from mutualbench.cli import main

    # zebra has images in one split and an empty folder in the other (before: "different classes")
    files = {k: v for k, v in synthetic_files(classes=("cat", "dog", "zebra")).items()
             if not k.startswith(f"{split}/zebra/")}
    tree = write_tree(tmp_path / "set", files)
    (tree / split / "zebra").mkdir()
    src = tree if kind == "tree" else _tar_of_tree(tree, tmp_path / "set.tar.gz")
    assert main(["data", str(src), "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    n = 4 if other == "train" else 2
    assert err.count("\n") == 1
    assert err.startswith(f"error: {src}: {split}/zebra/ has no images ({other}/zebra/ has {n}); every class needs")
    assert cache_files(data_root) == []


def test_empty_class_folder_added_to_a_cached_tree_is_not_hidden_by_the_cache(tmp_path, data_root, tiny_files):
    tree = write_tree(tmp_path / "set", tiny_files)
    first = load_dataset(tree, root=data_root)
    for split in ("train", "test"):
        (tree / split / "zebra").mkdir()
    with pytest.raises(DataError, match="class folder 'zebra' has no images"):
        load_dataset(tree, root=data_root)
    for split in ("train", "test"):  # a tree without empty folders keeps its checksum (and its cache)
        (tree / split / "zebra").rmdir()
    assert load_dataset(tree, root=data_root).sha256 == first.sha256


def test_non_class_folders_without_images_are_ignored(tmp_path, data_root, tiny_files):
    tree = write_tree(tmp_path / "set", tiny_files)
    (tree / "notes").mkdir()
    (tree / "train" / ".thumbs").mkdir()
    (tree / "train" / "cat" / "raw").mkdir()
    assert load_dataset(tree, root=data_root).classes == ["cat", "dog", "emu"]


# ----------------------------------------------------------------------------- bounded CIFAR download


class StallingServer:
    """A local TCP server that accepts connections and then never answers (or sends ``reply``
    once per connection and then stalls)."""

    def __init__(self, reply: bytes = b""):
        import socket
        import threading

        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            if self.reply:
                try:
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def offline_env(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MUTUALBENCH_NET_TIMEOUT", "0.5")


def test_cifar_download_from_a_server_that_never_answers_times_out(monkeypatch, offline_env, data_root, capsys):
    import socket
    import time

    import torchvision

    from mutualbench.cli import main

    server = StallingServer()
    url = f"http://127.0.0.1:{server.port}/cifar-10-python.tar.gz"
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", url)
    t0 = time.monotonic()
    try:
        code = main(["data", "cifar10", "--data-root", str(data_root)])
    finally:
        server.close()
    assert code == 2 and time.monotonic() - t0 < 30
    assert server.conns  # the connection was accepted: only the answer was missing
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: could not download cifar10 into ")
    assert f"no answer from {url} within 0.5 s" in err and "MUTUALBENCH_NET_TIMEOUT" in err
    assert "point --data at local files" in err
    assert list(data_root.iterdir()) == []  # nothing left that could pass for data
    assert socket.getdefaulttimeout() is None  # the process-wide default is restored


def test_cifar_download_that_stalls_midway_leaves_no_partial_archive(monkeypatch, offline_env, data_root, capsys):
    import torchvision
    import torchvision.datasets.utils as tv_utils

    from mutualbench.cli import main

    body = b"\x1f\x8b" + b"\0" * 40_000  # the first part of a much larger archive, then silence
    server = StallingServer(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + body)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", f"http://127.0.0.1:{server.port}/cifar-10-python.tar.gz")
    partial = []
    original = tv_utils._urlretrieve

    def spy(url, filename, *args, **kwargs):
        try:
            return original(url, filename, *args, **kwargs)
        except Exception:
            partial.append(os.path.getsize(filename) if os.path.exists(filename) else None)
            raise

    monkeypatch.setattr(tv_utils, "_urlretrieve", spy)
    kept = data_root / "torchvision" / "notes.txt"  # what was there before stays
    kept.parent.mkdir()
    kept.write_text("mine")
    try:
        code = main(["data", "cifar10", "--data-root", str(data_root)])
    finally:
        server.close()
    assert code == 2
    assert partial and partial[0] and partial[0] > 0  # torchvision did leave a partial archive behind
    err = capsys.readouterr().err.split("\n")[-2]  # the last line: torchvision's progress bar comes before it
    assert err.startswith("error: could not download cifar10") and "within 0.5 s" in err
    assert "its partial files were removed" in err
    assert sorted(p.relative_to(data_root).as_posix() for p in data_root.rglob("*")) == [
        "torchvision", "torchvision/notes.txt"]


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_bad_net_timeout_is_a_user_error(monkeypatch, data_root, value, capsys):
    from mutualbench.cli import main

    monkeypatch.setenv("MUTUALBENCH_NET_TIMEOUT", value)
    assert main(["data", "cifar10", "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: MUTUALBENCH_NET_TIMEOUT={value!r} is not a positive")
    assert list(data_root.iterdir()) == []
