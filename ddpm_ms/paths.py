"""Where ddpm_ms keeps what it makes once and reuses: downloads, the metric's classifier, built kernels."""
import os


def cache_dir(*parts):
    """``$XDG_CACHE_HOME/ddpm_ms/<parts>`` (default ``~/.cache/ddpm_ms/<parts>``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ddpm_ms", *parts)


class OutputError(RuntimeError):
    """An output folder cannot be used. The message is one line."""


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
