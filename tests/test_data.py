"""Data lookup, IDX validation and the verified, atomic downloader (with local fake archives)."""
import gzip
import hashlib
import os
import shutil
import zipfile

import numpy as np
import pytest

from ddpm_ms import data
from ddpm_ms.data import DataError


def _write_idx(folder, n=20, image_magic=2051, truncate=0, label_max=9):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    header = np.array([image_magic, n, 28, 28], ">u4").tobytes()
    body = rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()
    with open(os.path.join(folder, data.TRAIN_FILES[0]), "wb") as f:
        f.write((header + body)[: len(header + body) - truncate])
    labels = rng.integers(0, label_max + 1, n, dtype=np.uint8)
    with open(os.path.join(folder, data.TRAIN_FILES[1]), "wb") as f:
        f.write(np.array([2049, n], ">u4").tobytes() + labels.tobytes())
    return folder


def test_shared_copy_validates(data_dir):
    assert data.validate_fashion_dir(data_dir) == 7000
    x, y = data.load_fashion_arrays(data_dir, 5)
    assert x.shape == (5, 28, 28) and y.shape == (5,)


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_magic=1234), "magic number 1234"),
    (dict(truncate=100), "truncated"),
    (dict(label_max=12), "outside 0..9"),
])
def test_corrupt_files_are_named(tmp_path, kwargs, match):
    folder = _write_idx(str(tmp_path / "d"), **kwargs)
    with pytest.raises(DataError, match=match):
        data.validate_fashion_dir(folder)


def test_lookup_order(tmp_path, monkeypatch):
    root, env, cache = (_write_idx(str(tmp_path / n)) for n in ("root", "env", "cache"))
    monkeypatch.setenv("DDPM_MS_DATA_DIR", env)
    monkeypatch.setattr(data, "cache_dir", lambda: cache)
    assert data.resolve_fashion_dir(root, download=False) == root
    assert data.resolve_fashion_dir(None, download=False) == env
    monkeypatch.delenv("DDPM_MS_DATA_DIR")
    assert data.resolve_fashion_dir(str(tmp_path / "missing"), download=False) == cache


def test_offline_without_copy_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_MS_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "cache_dir", lambda: str(tmp_path / "cache"))

    def offline(url, dest):
        raise ConnectionError("network unreachable")

    with pytest.raises(DataError) as err:
        data.resolve_fashion_dir(None, fetch=offline)
    msg = str(err.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg and str(tmp_path / "cache") in msg
    assert not os.path.exists(tmp_path / "cache")


def _serve(files):
    """A fake fetch(url, dest) that copies from a dict of url-basename -> local file."""
    def fetch(url, dest):
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise ConnectionError(f"404 {url}")
        shutil.copy(files[name], dest)
    return fetch


def test_download_from_tutorial_zip(tmp_path):
    src = _write_idx(str(tmp_path / "src"))
    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in data.TRAIN_FILES:
            zf.write(os.path.join(src, name), f"dataset/train/{name}")
    root = str(tmp_path / "cache" / "fashion")
    data.download_fashion_mnist(root, fetch=_serve({"dataset.zip": archive}))
    assert data.validate_fashion_dir(root) == 20
    assert sorted(os.listdir(tmp_path / "cache")) == ["fashion"]     # no temporary folders left


def _gz_files(tmp_path, src):
    out = {}
    for name in data.TRAIN_FILES:
        gz = tmp_path / (name + ".gz")
        with open(os.path.join(src, name), "rb") as f, gzip.open(gz, "wb") as g:
            g.write(f.read())
        out[name + ".gz"] = gz
    return out


def test_gz_mirror_with_verified_checksums(tmp_path, monkeypatch):
    files = _gz_files(tmp_path, _write_idx(str(tmp_path / "src")))
    monkeypatch.setattr(data, "GZ_MD5", {k: hashlib.md5(open(v, "rb").read()).hexdigest() for k, v in files.items()})
    root = str(tmp_path / "cache" / "fashion")
    data.download_fashion_mnist(root, fetch=_serve(files), mirrors=("http://mirror.invalid/",))
    assert data.validate_fashion_dir(root) == 20


def test_wrong_checksum_is_rejected_and_nothing_left(tmp_path):
    files = _gz_files(tmp_path, _write_idx(str(tmp_path / "src")))   # real MD5s will not match these
    root = tmp_path / "cache" / "fashion"
    with pytest.raises(DataError, match="checksum mismatch"):
        data.download_fashion_mnist(str(root), fetch=_serve(files), mirrors=("http://mirror.invalid/",))
    assert not root.exists()
    assert os.listdir(tmp_path / "cache") == []


def test_zip_path_escape_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(DataError, match="escapes"):
        data.safe_extract_zip(str(archive), str(tmp_path / "target"))
    assert not (tmp_path / "escaped.txt").exists()


def test_pipeline_labels_and_range(data_dir):
    import mindspore.dataset as ds
    ds.config.set_seed(0)
    d = data.fashion_mnist(data_dir, batch_size=4, num_samples=16, labels=True)
    images, labels = next(d.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.shape == (4, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (4,) and labels.dtype == np.int32 and labels.max() <= 9
    assert -1.0 <= images.min() and images.max() <= 1.0 + 1e-6
    assert d.get_dataset_size() == 4


def test_index_range_reads_exactly_those_images(data_dir):
    """data.index_range [40, 72): one epoch holds each of those 32 images once, in a seeded random order."""
    import mindspore.dataset as ds
    x, y = data.load_fashion_arrays(data_dir, 80)
    want = x[40:72].astype(np.float32) / 127.5 - 1.0

    def epoch(seed):
        ds.config.set_seed(seed)
        d = data.fashion_mnist(data_dir, batch_size=8, labels=True, random_flip=False, index_range=(40, 72))
        rows = list(d.create_tuple_iterator(num_epochs=1, output_numpy=True))
        return np.concatenate([r[0] for r in rows])[:, 0], np.concatenate([r[1] for r in rows])

    images, labels = epoch(0)
    assert images.shape == (32, 28, 28)
    match = [int(np.argmin(np.abs(want - im).max((1, 2)))) for im in images]
    assert sorted(match) == list(range(32))                                   # every image once, none outside
    np.testing.assert_allclose(images, want[match], atol=1e-6)
    np.testing.assert_array_equal(labels, y[40:72][match])
    assert match != list(range(32)) and np.array_equal(epoch(0)[0], images)  # shuffled, reproducibly
    with pytest.raises(DataError, match=r"index_range \[0, 9000\].*holds 7000"):
        data.fashion_mnist(data_dir, index_range=(0, 9000))


def test_image_folder_pipeline(tmp_path):
    import matplotlib.pyplot as plt
    for cls in ("cats", "dogs"):
        os.makedirs(tmp_path / cls)
        for i in range(2):
            plt.imsave(tmp_path / cls / f"{i}.png", np.random.default_rng(i).random((40, 50, 3)))
    d = data.image_folder(str(tmp_path), image_size=32, batch_size=2, labels=True)
    images, labels = next(d.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2,)
    with pytest.raises(DataError, match="image folder not found"):
        data.image_folder(str(tmp_path / "nope"), 32)
