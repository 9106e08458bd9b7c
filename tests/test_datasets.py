"""MNIST and CIFAR-10 through MindSpore's own loaders, on small synthetic files in the real formats (IDX, and the
CIFAR-10 binary batches): validation, the verified download, offline errors, and training, resuming and sampling."""
import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from ddpm_ms import data
from ddpm_ms.errors import DataError

from cli_batch import assert_one_line_error, run_batch
from conftest import ROOT, TINY_YAML


def write_mnist(folder, n=32, seed=0):
    """IDX train files of ``n`` random 28x28 digits with labels 0..9."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, "train-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">iiii", 2051, n, 28, 28) + rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
    with open(os.path.join(folder, "train-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">ii", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())
    return str(folder)


def cifar_records(n=10000, seed=0):
    """``n`` CIFAR-10 binary records: a label byte (0..9 in turn), then 3072 pixel bytes (a few random rows, the
    rest a per-image grey, so that the archive compresses)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)[:, None]
    pixels = np.repeat(rng.integers(0, 256, (n, 1), dtype=np.uint8), 3072, axis=1)
    pixels[:, :96] = rng.integers(0, 256, (n, 96), dtype=np.uint8)
    return np.concatenate([labels, pixels], 1).tobytes()


def write_cifar(folder, per_batch=10000, seed=0):
    """The five CIFAR-10 binary training batches, ``per_batch`` records each (the real files hold 10000)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(1, 6):
        with open(os.path.join(folder, f"data_batch_{i}.bin"), "wb") as f:
            f.write(cifar_records(per_batch, seed + i))
    return str(folder)


def test_validation_counts_and_rejects_corrupt_files(tmp_path):
    assert data.validate_source_dir(data.SOURCES["mnist"], write_mnist(tmp_path / "m", 20)) == 20
    assert data.validate_source_dir(data.SOURCES["cifar10"], write_cifar(tmp_path / "c")) == 50000
    with open(tmp_path / "c" / "data_batch_3.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(DataError, match="data_batch_3.bin: 30730010 bytes, expected 10000 records"):
        data.validate_source_dir(data.SOURCES["cifar10"], str(tmp_path / "c"))
    os.remove(tmp_path / "m" / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match="MNIST file missing"):
        data.validate_source_dir(data.SOURCES["mnist"], str(tmp_path / "m"))


def _fake_fetch(files):
    """A fetch(url, dest) that serves ``files`` {url suffix: bytes}, and fails for anything else."""
    def fetch(url, dest):
        for suffix, payload in files.items():
            if url.endswith(suffix):
                with open(dest, "wb") as f:
                    f.write(payload)
                return
        raise OSError(f"unreachable: {url}")
    return fetch


def test_download_checks_the_published_md5_and_installs_only_verified_files(tmp_path, monkeypatch):
    src = write_mnist(tmp_path / "src", 12)
    gz = {name + ".gz": gzip.compress(open(os.path.join(src, name), "rb").read()) for name in data.TRAIN_FILES}
    with pytest.raises(DataError, match="checksum mismatch"):   # our archives are not the published ones
        data.download_source(data.SOURCES["mnist"], str(tmp_path / "dest"), fetch=_fake_fetch(gz))
    assert not (tmp_path / "dest").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".mnist")]
    md5 = tuple((k, hashlib.md5(v).hexdigest()) for k, v in gz.items())
    monkeypatch.setitem(data.SOURCES, "mnist", data.Source(**{**data.SOURCES["mnist"].__dict__, "md5": md5}))
    out = data.download_source(data.SOURCES["mnist"], str(tmp_path / "dest"), fetch=_fake_fetch(gz))
    assert data.validate_source_dir(data.SOURCES["mnist"], out) == 12


def test_cifar_archive_download(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(1, 6):
            payload = cifar_records(seed=i)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/data_batch_{i}.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    archive = buf.getvalue()
    src = data.SOURCES["cifar10"]
    monkeypatch.setitem(data.SOURCES, "cifar10", data.Source(**{**src.__dict__, "md5": (
        ("cifar-10-binary.tar.gz", hashlib.md5(archive).hexdigest()),)}))
    out = data.download_source(data.SOURCES["cifar10"], str(tmp_path / "c"),
                               fetch=_fake_fetch({"cifar-10-binary.tar.gz": archive}))
    assert data.validate_source_dir(data.SOURCES["cifar10"], out) == 50000


def test_offline_and_wrong_folder_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_MS_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DDPM_MS_DATA_DIR", str(tmp_path / "shared" / "fashion-mnist"))
    with pytest.raises(DataError, match="CIFAR-10 not found in .* downloads are off"):
        data.resolve_source_dir("cifar10")
    write_mnist(tmp_path / "wrong")                      # MNIST files where CIFAR-10 is asked for
    with pytest.raises(DataError, match="does not hold CIFAR-10: data_batch_1.bin is missing"):
        data.resolve_source_dir("cifar10", str(tmp_path / "wrong"))
    write_mnist(tmp_path / "shared" / "mnist")           # beside DDPM_MS_DATA_DIR
    assert data.resolve_source_dir("mnist") == str(tmp_path / "shared" / "mnist")


@pytest.mark.parametrize("dataset,channels,size", [("mnist", 1, 28), ("cifar10", 3, 32)])
def test_train_resume_and_sample(tmp_path, dataset, channels, size):
    """A conditional tiny model on the synthetic files: 2 steps, resumed to 3, then 4 samples of class 1."""
    root = write_mnist(tmp_path / "d") if dataset == "mnist" else write_cifar(tmp_path / "d")
    out = tmp_path / "run"
    common = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", TINY_YAML, "--no-progress",
              *[a for s in (f"data.dataset={dataset}", f"data.root={root}", f"data.image_size={size}",
                            f"model.channels={channels}", "model.num_classes=10", f"train.out_dir={out}",
                            "train.sample_num=2", "train.gif=false", "train.batch_size=4", "data.num_samples=32")
                  for a in ("--set", s)]]
    first = subprocess.run(common + ["--set", "train.max_steps=2"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(common + ["--set", "train.max_steps=3", "--resume", "latest"], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["step"] == 3
    ckpt = str(out / "ckpt_step00000003.ckpt")
    sampled, evaluated = run_batch([["sample", "--ckpt", ckpt, "--num", "4", "--class", "1", "--sampler", "ddim",
                                     "--steps", "3", "--out", str(tmp_path / "s")],
                                    ["evaluate", "--ckpt", ckpt]], tmp_path)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert np.load(tmp_path / "s" / "samples.npy").shape == (4, channels, size, size)
    assert_one_line_error(evaluated, "Fashion-MNIST", dataset)


def test_dataset_that_does_not_fit_the_model_is_one_line(tmp_path):
    root = write_cifar(tmp_path / "c")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", TINY_YAML,
                           "--set", "data.dataset=cifar10", "--set", f"data.root={root}",
                           "--set", f"train.out_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "model.channels=1", "cifar10")
