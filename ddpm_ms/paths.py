"""Where ddpm_ms keeps what it makes once and reuses: downloads, the metric's classifier, built kernels."""
import os


def cache_dir(*parts):
    """``$XDG_CACHE_HOME/ddpm_ms/<parts>`` (default ``~/.cache/ddpm_ms/<parts>``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ddpm_ms", *parts)
