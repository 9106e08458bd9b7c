"""Atomic writes: an interrupt or a full disk in the middle of any output leaves the earlier file whole, no
temporary behind, and (for a full disk) one OutputError line naming the file."""
import errno
import os

import numpy as np
import pytest

from ddpm_ms import paths, viz
from ddpm_ms.errors import OutputError


def _no_temporaries(folder):
    return not [f for f in os.listdir(folder) if f.startswith(paths.TMP_PREFIX)]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "samples.npy"
    paths.save_npy(str(target), np.zeros(3))
    with pytest.raises(KeyboardInterrupt):
        with paths.written(str(target)) as tmp:
            np.save(tmp, np.ones(1000))
            raise KeyboardInterrupt
    np.testing.assert_array_equal(np.load(target), np.zeros(3))
    assert _no_temporaries(tmp_path)


@pytest.mark.parametrize("what", ["grid", "figure", "gif", "npy", "text"])
def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path, monkeypatch, what):
    images = np.random.default_rng(0).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    name = {"grid": "g.png", "figure": "f.png", "gif": "a.gif", "npy": "s.npy", "text": "t.yaml"}[what]
    target = str(tmp_path / name)
    write = {"grid": lambda: viz.save_grid(images, target, nrow=2),
             "figure": lambda: viz.save_grid(images, target, nrow=2, title="t"),
             "gif": lambda: viz.save_gif(np.stack([images, images]), target),
             "npy": lambda: paths.save_npy(target, images),
             "text": lambda: paths.save_text(target, "a: 1\n")}[what]
    write()
    before = open(target, "rb").read()
    real_replace = os.replace

    def full_disk(src, dst):   # the data went to the temporary file; then the disk is full
        with open(src, "r+b") as f:
            f.truncate(os.path.getsize(src) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputError, match=f"could not write {target}: No space left on device") as err:
        write()
    monkeypatch.setattr(os, "replace", real_replace)
    assert "\n" not in str(err.value)
    assert open(target, "rb").read() == before
    assert _no_temporaries(tmp_path)
