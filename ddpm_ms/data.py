"""Fashion-MNIST, MNIST, CIFAR-10 and image-folder pipelines, with a verified, atomic downloader.

MNIST and CIFAR-10 (:data:`SOURCES`) are found the same way as Fashion-MNIST, in ``data.root``, then a folder
``<name>`` beside ``$DDPM_MS_DATA_DIR`` (which names the Fashion-MNIST folder), then
``$XDG_CACHE_HOME/ddpm_ms/<name>``, and are otherwise downloaded there from
their official mirrors with their published MD5s; they load through MindSpore's ``MnistDataset`` and
``Cifar10Dataset``.

Lookup order for Fashion-MNIST: ``data.root`` from the config, then the
``DDPM_MS_DATA_DIR`` environment variable, then a cache folder
(``$XDG_CACHE_HOME/ddpm_ms/fashion-mnist``). If none holds the files they are
downloaded into the cache: the tutorial's ``dataset.zip`` first, then the
official gzip mirrors, whose published MD5s are checked. Every file is written
to a temporary name and moved into place only once it is verified.
"""
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from . import paths
from .errors import ConfigError, DataError

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TUTORIAL_ZIP_URL = "https://mindspore-website.obs.cn-north-4.myhuaweicloud.com/notebook/datasets/dataset.zip"
GZ_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# Published in the Fashion-MNIST README, for the .gz files.
GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"]


def cache_dir():
    """Default download folder: $XDG_CACHE_HOME/ddpm_ms/fashion-mnist."""
    return paths.cache_dir("fashion-mnist")


def _read_header(path, magic, ndim):
    size = os.path.getsize(path)
    header = 4 + 4 * ndim
    if size < header:
        raise DataError(f"corrupt Fashion-MNIST file {path}: {size} bytes is shorter than its header")
    with open(path, "rb") as f:
        fields = np.frombuffer(f.read(header), dtype=">u4")
    if fields[0] != magic:
        raise DataError(f"corrupt Fashion-MNIST file {path}: magic number {fields[0]}, expected {magic}")
    dims = [int(x) for x in fields[1:]]
    expected = header + int(np.prod(dims))
    if size != expected:
        raise DataError(f"corrupt Fashion-MNIST file {path}: {size} bytes, header promises {expected} "
                        f"(dims {dims}); the file is truncated or padded")
    return dims


def validate_fashion_dir(root):
    """Check both train IDX files in ``root``: magic numbers, sizes, matching counts, labels 0..9.

    Returns the number of images; raises DataError naming the bad file.
    """
    images, labels = (os.path.join(root, name) for name in TRAIN_FILES)
    for path in (images, labels):
        if not os.path.isfile(path):
            raise DataError(f"Fashion-MNIST file missing: {path}")
    n, rows, cols = _read_header(images, IMAGE_MAGIC, 3)
    (n_labels,) = _read_header(labels, LABEL_MAGIC, 1)
    if (rows, cols) != (28, 28):
        raise DataError(f"corrupt Fashion-MNIST file {images}: images are {rows}x{cols}, expected 28x28")
    if n != n_labels:
        raise DataError(f"Fashion-MNIST files in {root} disagree: {n} images but {n_labels} labels")
    with open(labels, "rb") as f:
        f.seek(8)
        if np.frombuffer(f.read(), dtype=np.uint8).max(initial=0) > 9:
            raise DataError(f"corrupt Fashion-MNIST file {labels}: a label is outside 0..9")
    return n


def _has_files(root):
    return bool(root) and all(os.path.isfile(os.path.join(root, f)) for f in TRAIN_FILES)


def md5sum(path):
    """Hex MD5 of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url, dest):
    """Fetch ``url`` to ``dest`` with the ``download`` package (no extraction)."""
    import download as _download  # pylint: disable=import-outside-toplevel
    _download.download(url, dest, kind="file", replace=True, progressbar=True, verbose=False, timeout=20.0)


def safe_extract_zip(archive, target):
    """Extract a zip into ``target``, refusing members that would land outside it."""
    target = os.path.realpath(target)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            dest = os.path.realpath(os.path.join(target, member))
            if dest != target and not dest.startswith(target + os.sep):
                raise DataError(f"refusing to extract {archive}: member {member!r} escapes {target}")
        zf.extractall(target)


def _find_train_files(folder):
    """The folder below ``folder`` (itself included) that holds both train IDX files, or None."""
    for dirpath, _, filenames in os.walk(folder):
        if all(name in filenames for name in TRAIN_FILES):
            return dirpath
    return None


def _install(src_dir, root):
    """Validate the IDX files in src_dir, then move them into root (atomic per file)."""
    validate_fashion_dir(src_dir)
    os.makedirs(root, exist_ok=True)
    for name in TRAIN_FILES:
        os.replace(os.path.join(src_dir, name), os.path.join(root, name))


def _from_zip(url, root, work, fetch):
    archive = os.path.join(work, "dataset.zip")
    fetch(url, archive)
    try:
        safe_extract_zip(archive, os.path.join(work, "unzipped"))
    except zipfile.BadZipFile as e:
        raise DataError(f"downloaded {url} is not a valid zip archive: {e}") from None
    found = _find_train_files(os.path.join(work, "unzipped"))
    if found is None:
        raise DataError(f"{url} holds no {TRAIN_FILES[0]}")
    _install(found, root)


def _from_gz(mirror, root, work, fetch):
    out = os.path.join(work, "raw")
    os.makedirs(out, exist_ok=True)
    for name in TRAIN_FILES:
        gz_name = name + ".gz"
        gz_path = os.path.join(work, gz_name)
        fetch(mirror + gz_name, gz_path)
        digest = md5sum(gz_path)
        if digest != GZ_MD5[gz_name]:
            raise DataError(f"checksum mismatch for {mirror + gz_name}: md5 {digest}, expected {GZ_MD5[gz_name]}")
        with gzip.open(gz_path, "rb") as src, open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    _install(out, root)


def download_fashion_mnist(root, fetch=download_file, zip_url=TUTORIAL_ZIP_URL, mirrors=GZ_MIRRORS):
    """Download the Fashion-MNIST training files into ``root``; returns ``root``.

    ``fetch(url, dest)`` does the transfer (injectable for tests). Everything
    happens in a temporary folder next to ``root``; only verified files are
    moved in, and nothing is left behind on failure.
    """
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    errors = []
    sources = [(_from_zip, zip_url)] + [(_from_gz, m) for m in mirrors]
    for method, url in sources:
        work = tempfile.mkdtemp(prefix=".fashion-download-", dir=parent)
        try:
            method(url, root, work, fetch)
            return root
        except Exception as e:  # pylint: disable=broad-except  # try the next source
            errors.append(f"{url}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise DataError("could not download Fashion-MNIST (" + "; ".join(errors) + ")")


def resolve_fashion_dir(root=None, download=None, fetch=download_file):
    """Folder holding valid Fashion-MNIST train files: root, $DDPM_MS_DATA_DIR, cache; else download.

    ``download`` defaults to True unless DDPM_MS_OFFLINE=1. Raises DataError (one line
    saying where to put the files) when offline with no copy.
    """
    if download is None:
        download = os.environ.get("DDPM_MS_OFFLINE", "") not in ("1", "true", "yes")
    candidates = [p for p in (root, os.environ.get("DDPM_MS_DATA_DIR"), cache_dir()) if p]
    for path in candidates:
        if _has_files(path):
            validate_fashion_dir(path)
            return path
    if root and os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"data.root {root} is not a folder")
    if download:
        try:
            return download_fashion_mnist(cache_dir(), fetch=fetch)
        except DataError as e:
            reason = str(e)
        where = " or ".join(candidates)
        raise DataError(f"Fashion-MNIST not found and {reason}; put {TRAIN_FILES[0]} and {TRAIN_FILES[1]} "
                        f"in {where} (or set DDPM_MS_DATA_DIR)")
    raise DataError(f"Fashion-MNIST not found in {' or '.join(candidates)} and downloads are off "
                    f"(DDPM_MS_OFFLINE); put {TRAIN_FILES[0]} and {TRAIN_FILES[1]} there")


def _image_ops(image_size=None, random_flip=True, resize=False):
    import mindspore.dataset.vision as vision  # pylint: disable=import-outside-toplevel
    ops_ = []
    if resize:
        ops_ += [vision.Resize(image_size, vision.Inter.BILINEAR), vision.CenterCrop(image_size)]
    if random_flip:
        ops_.append(vision.RandomHorizontalFlip())
    # ToTensor: HWC uint8 -> CHW float in [0, 1]; Rescale: t * 2 - 1 -> [-1, 1]
    ops_ += [vision.ToTensor(), vision.Rescale(2.0, -1.0)]
    return ops_


def _reading(num_samples, index_range, num_shards, shard_id):
    """Keyword arguments of a MindSpore source dataset: a random ``num_samples`` of all images (this shard's), or
    of the images with indices in ``index_range`` [start, stop) (this shard's every ``num_shards``-th)."""
    import mindspore.dataset as ds  # pylint: disable=import-outside-toplevel
    if index_range is None:
        return dict(num_samples=num_samples, shuffle=True, num_shards=num_shards, shard_id=shard_id)
    indices = list(range(*index_range))[(shard_id or 0)::(num_shards or 1)]
    return dict(sampler=ds.SubsetRandomSampler(indices, num_samples=num_samples))


def check_index_range(index_range, available, what):
    """DataError unless ``index_range`` [start, stop) lies within the ``available`` images of ``what``."""
    if index_range is not None and index_range[1] > available:
        raise DataError(f"data.index_range {list(index_range)} asks for images up to {index_range[1]}, "
                        f"but {what} holds {available}")


def _finish(dataset, columns, batch_size, shuffle_buffer, image_ops, num_workers, labels):
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    import mindspore.dataset.transforms as transforms  # pylint: disable=import-outside-toplevel
    dataset = dataset.project(columns)
    dataset = dataset.shuffle(shuffle_buffer)
    dataset = dataset.map(image_ops, "image", num_parallel_workers=num_workers)
    if labels:
        dataset = dataset.map(transforms.TypeCast(ms.int32), "label")
    return dataset.batch(batch_size, drop_remainder=True)


def fashion_mnist(root, batch_size=16, num_samples=None, shuffle_buffer=64, random_flip=True, labels=False,
                  num_shards=None, shard_id=None, num_workers=1, index_range=None):
    """The tutorial's pipeline: image [B, 1, 28, 28] float32 in [-1, 1] (and label [B] int32 if ``labels``).

    project -> shuffle(buffer) -> map [RandomHorizontalFlip, ToTensor, x*2-1] -> batch(drop_remainder).
    ``index_range`` (start, stop) reads only those images of the training file, in random order.
    """
    import mindspore.dataset as ds  # pylint: disable=import-outside-toplevel
    check_index_range(index_range, validate_fashion_dir(root), root)
    dataset = ds.FashionMnistDataset(root, usage="train", num_parallel_workers=num_workers,
                                     **_reading(num_samples, index_range, num_shards, shard_id))
    columns = ["image", "label"] if labels else ["image"]
    return _finish(dataset, columns, batch_size, shuffle_buffer, _image_ops(random_flip=random_flip),
                   num_workers, labels)


def image_folder(root, image_size, batch_size=16, num_samples=None, shuffle_buffer=64, random_flip=True,
                 labels=False, num_shards=None, shard_id=None, num_workers=1, index_range=None):
    """Your own pictures (one sub-folder per class): image [B, 3, S, S] in [-1, 1], resized and centre-cropped.

    ``index_range`` (start, stop) indexes the files in MindSpore's order (sorted by class, then by name).
    """
    import mindspore.dataset as ds  # pylint: disable=import-outside-toplevel
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    if index_range is not None:
        check_index_range(index_range, ds.ImageFolderDataset(root, extensions=IMAGE_EXTENSIONS).get_dataset_size(),
                          root)
    dataset = ds.ImageFolderDataset(root, decode=True, extensions=IMAGE_EXTENSIONS, num_parallel_workers=num_workers,
                                    **_reading(num_samples, index_range, num_shards, shard_id))
    return _finish(dataset, ["image", "label"] if labels else ["image"], batch_size, shuffle_buffer,
                   _image_ops(image_size, random_flip, resize=True), num_workers, labels)


def class_folders(root):
    """The sub-folders of an image folder that hold at least one image (one class each), sorted."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and any(
        os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in os.listdir(d.path)))


@dataclass(frozen=True)
class Source:
    """A downloadable dataset: its training ``files`` in one folder, where to fetch them (``urls``: each a full
    archive URL or a mirror base for ``<file>.gz``), the archives' published MD5s, and its image geometry."""
    name: str
    title: str
    files: Tuple[str, ...]
    urls: Tuple[str, ...]
    md5: Tuple[Tuple[str, str], ...]
    channels: int
    image_size: int
    classes: Tuple[str, ...]


SOURCES = {
    "mnist": Source("mnist", "MNIST", TRAIN_FILES,
                    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
                    (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                     ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432")),
                    1, 28, tuple(str(i) for i in range(10))),
    "cifar10": Source("cifar10", "CIFAR-10", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                      ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                      (("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
                      3, 32, ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                              "truck")),
}
CIFAR_RECORD = 1 + 32 * 32 * 3   # a label byte, then 1024 red, 1024 green and 1024 blue bytes
CIFAR_PER_FILE = 10000           # records in each data_batch_N.bin (MindSpore's reader needs exactly this)


def validate_source_dir(source, root):
    """Check the training files of ``source`` in ``root`` (IDX headers, or CIFAR-10 record sizes and labels);
    returns the number of images; DataError naming the bad file."""
    for name in source.files:
        if not os.path.isfile(os.path.join(root, name)):
            raise DataError(f"{source.title} file missing: {os.path.join(root, name)}")
    if source.name == "mnist":
        images, labels = (os.path.join(root, name) for name in source.files)
        n, rows, cols = _read_header(images, IMAGE_MAGIC, 3)
        (n_labels,) = _read_header(labels, LABEL_MAGIC, 1)
        if (rows, cols) != (28, 28) or n != n_labels:
            raise DataError(f"corrupt MNIST files in {root}: {n} images of {rows}x{cols}, {n_labels} labels")
        return n
    total = 0
    for name in source.files:
        path = os.path.join(root, name)
        size = os.path.getsize(path)
        if size != CIFAR_PER_FILE * CIFAR_RECORD:
            raise DataError(f"corrupt CIFAR-10 file {path}: {size} bytes, expected {CIFAR_PER_FILE} records of "
                            f"{CIFAR_RECORD} bytes")
        with open(path, "rb") as f:
            labels = np.frombuffer(f.read(), np.uint8)[::CIFAR_RECORD]
        if labels.max(initial=0) > 9:
            raise DataError(f"corrupt CIFAR-10 file {path}: a label is outside 0..9")
        total += size // CIFAR_RECORD
    return total


def download_source(source, root, fetch=download_file):
    """Download ``source``'s training files into ``root`` from its mirrors, checking each archive's MD5; only
    verified files are moved in, and nothing is left behind on failure. Returns ``root``."""
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    md5, errors = dict(source.md5), []
    for url in source.urls:
        work = tempfile.mkdtemp(prefix=f".{source.name}-download-", dir=parent)
        try:
            out = os.path.join(work, "files")
            os.makedirs(out)
            if url.endswith(".tar.gz"):
                archive = os.path.join(work, os.path.basename(url))
                fetch(url, archive)
                _check_md5(archive, md5[os.path.basename(url)], url)
                with tarfile.open(archive, "r:gz") as tar:
                    for member in tar.getmembers():
                        if member.isfile() and os.path.basename(member.name) in source.files:
                            with tar.extractfile(member) as src, open(os.path.join(out, os.path.basename(
                                    member.name)), "wb") as dst:
                                shutil.copyfileobj(src, dst)
            else:
                for name in source.files:
                    gz = os.path.join(work, name + ".gz")
                    fetch(url + name + ".gz", gz)
                    _check_md5(gz, md5[name + ".gz"], url + name + ".gz")
                    with gzip.open(gz, "rb") as src, open(os.path.join(out, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)
            validate_source_dir(source, out)
            os.makedirs(root, exist_ok=True)
            for name in source.files:
                os.replace(os.path.join(out, name), os.path.join(root, name))
            return root
        except Exception as e:  # pylint: disable=broad-except  # try the next mirror
            errors.append(f"{url}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise DataError(f"could not download {source.title} (" + "; ".join(errors) + ")")


def _check_md5(path, expected, url):
    digest = md5sum(path)
    if digest != expected:
        raise DataError(f"checksum mismatch for {url}: md5 {digest}, expected {expected}")


def resolve_source_dir(source, root=None, download=None, fetch=download_file):
    """Folder holding valid training files of ``source``: root, $DDPM_MS_DATA_DIR/<name>, the cache; else
    downloaded into the cache (unless DDPM_MS_OFFLINE=1). DataError in one line saying where to put them."""
    if isinstance(source, str):
        source = SOURCES[source]
    if download is None:
        download = os.environ.get("DDPM_MS_OFFLINE", "") not in ("1", "true", "yes")
    env = os.environ.get("DDPM_MS_DATA_DIR")
    candidates = [p for p in (root, env and os.path.join(os.path.dirname(env.rstrip(os.sep)), source.name),
                              paths.cache_dir(source.name)) if p]
    for path in candidates:
        if all(os.path.isfile(os.path.join(path, f)) for f in source.files):
            validate_source_dir(source, path)
            return path
    if root and os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"data.root {root} is not a folder")
    if root and os.path.isdir(root) and os.listdir(root):
        missing = [f for f in source.files if not os.path.isfile(os.path.join(root, f))]
        raise DataError(f"data.root {root} does not hold {source.title}: {missing[0]} is missing")
    reason = "downloads are off (DDPM_MS_OFFLINE)"
    if download:
        try:
            return download_source(source, paths.cache_dir(source.name), fetch=fetch)
        except DataError as e:
            reason = str(e)
    raise DataError(f"{source.title} not found in {' or '.join(candidates)} and {reason}; put "
                    f"{', '.join(source.files)} in one of them")


def source_dataset(source, root, batch_size=16, num_samples=None, shuffle_buffer=64, random_flip=True, labels=False,
                   num_shards=None, shard_id=None, num_workers=1, index_range=None):
    """MNIST or CIFAR-10 through MindSpore's own loader: image [B, C, S, S] float32 in [-1, 1] (and label [B]
    int32 if ``labels``); the same pipeline as :func:`fashion_mnist`."""
    import mindspore.dataset as ds  # pylint: disable=import-outside-toplevel
    check_index_range(index_range, validate_source_dir(source, root), root)
    loader = ds.MnistDataset if source.name == "mnist" else ds.Cifar10Dataset
    dataset = loader(root, usage="train", num_parallel_workers=num_workers,
                     **_reading(num_samples, index_range, num_shards, shard_id))
    columns = ["image", "label"] if labels else ["image"]
    return _finish(dataset, columns, batch_size, shuffle_buffer, _image_ops(random_flip=random_flip),
                   num_workers, labels)


def check_data_fits_model(data_cfg, model_cfg):
    """ConfigError naming both keys when the dataset's channels, image size or classes differ from the model's.

    Fashion-MNIST yields 1-channel 28x28 images of 10 classes; an image folder yields RGB images resized to
    data.image_size, one class per sub-folder.
    """
    if data_cfg.dataset == "image_folder":
        if not data_cfg.root:
            raise DataError("data.root must name the image folder when data.dataset is image_folder")
        channels, size, classes = 3, None, len(class_folders(data_cfg.root))
        what = f"the image folder {data_cfg.root} ({classes} class sub-folders, RGB)"
    elif data_cfg.dataset in SOURCES:
        src = SOURCES[data_cfg.dataset]
        channels, size, classes = src.channels, src.image_size, len(src.classes)
        what = f"data.dataset={src.name} ({channels}-channel {size}x{size} images, {classes} classes)"
    else:
        channels, size, classes = 1, 28, len(FASHION_CLASSES)
        what = "data.dataset=fashion_mnist (1-channel 28x28 images, 10 classes)"
    if model_cfg.channels != channels:
        raise ConfigError(f"model.channels={model_cfg.channels} does not fit data.dataset: {what}")
    if size is not None and data_cfg.image_size != size:
        raise ConfigError(f"data.image_size={data_cfg.image_size} does not fit data.dataset: {what}")
    if model_cfg.num_classes is not None and model_cfg.num_classes != classes:
        raise ConfigError(f"model.num_classes={model_cfg.num_classes} does not fit data.dataset: {what}")


def build_dataset(data_cfg, batch_size, labels=False, num_shards=None, shard_id=None, download=None):
    """The dataset a DataConfig describes (Fashion-MNIST is looked up or downloaded first)."""
    common = dict(batch_size=batch_size, num_samples=data_cfg.num_samples, shuffle_buffer=data_cfg.shuffle_buffer,
                  random_flip=data_cfg.random_flip, labels=labels, num_shards=num_shards, shard_id=shard_id,
                  num_workers=data_cfg.num_workers, index_range=data_cfg.index_range)
    if data_cfg.dataset == "image_folder":
        if not data_cfg.root:
            raise DataError("data.root must name the image folder when data.dataset is image_folder")
        return image_folder(data_cfg.root, data_cfg.image_size, **common)
    if data_cfg.dataset in SOURCES:
        src = SOURCES[data_cfg.dataset]
        return source_dataset(src, resolve_source_dir(src, data_cfg.root, download=download), **common)
    return fashion_mnist(resolve_fashion_dir(data_cfg.root, download=download), **common)


def load_fashion_arrays(root, count=None):
    """The raw training images and labels as numpy: ([N, 28, 28] uint8, [N] uint8)."""
    n = validate_fashion_dir(root)
    count = n if count is None else min(count, n)
    images, labels = (os.path.join(root, name) for name in TRAIN_FILES)
    with open(images, "rb") as f:
        f.seek(16)
        x = np.frombuffer(f.read(count * 784), dtype=np.uint8).reshape(count, 28, 28)
    with open(labels, "rb") as f:
        f.seek(8)
        y = np.frombuffer(f.read(count), dtype=np.uint8)
    return x, y
