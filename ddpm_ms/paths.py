"""Where ddpm_ms keeps what it makes once and reuses (downloads, the metric's classifier, built kernels), and the
small file-system helpers every writer shares."""
import os
from contextlib import contextmanager

from .errors import OutputError


def cache_dir(*parts):
    """``$XDG_CACHE_HOME/ddpm_ms/<parts>`` (default ``~/.cache/ddpm_ms/<parts>``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ddpm_ms", *parts)


def make_output_dir(path, what):
    """Create the folder ``path`` (with parents) and return it; OutputError naming ``what`` when it cannot be used.

    ``what`` says which setting the path came from, e.g. ``"--out"`` or ``"train.out_dir"``.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{what} {path} is an existing file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {path} cannot be created: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} is not writable")
    return path


@contextmanager
def held_stderr():
    """Send file descriptor 2 to /dev/null inside the block: for MindSpore calls that print several lines (or a
    misleading one) before raising an error that the caller reports in one line itself."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w", encoding="utf-8") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


TMP_PREFIX = ".tmp-"   # temporaries of atomic writes; a run folder's are removed when a run (re)opens it


@contextmanager
def written(path):
    """Write ``path`` atomically: ``with written(path) as tmp:`` write ``tmp`` (a name beside ``path`` with the same
    suffix), which is renamed over ``path`` at the end. A failed write (a full disk, an interrupt) leaves any earlier
    file at ``path`` whole and no partial file; an OSError becomes one OutputError line naming ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"could not write {path}: {e.strerror or e}; nothing was half-written") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npy(path, array):
    """np.save, atomically (:func:`written`)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    with written(path) as tmp:
        np.save(tmp, array)
    return path


def save_text(path, text):
    """Write a text file atomically (:func:`written`)."""
    with written(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return path
