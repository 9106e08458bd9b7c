"""Compile ``onednn_kernels.cc`` on first use into a cache folder, atomically and once across processes.

The library links the ``libdnnl.so.3`` inside the installed mindspore wheel. The wheel ships no oneDNN headers, so
they come from the pinned registry package ``onednn-devel`` (found installed, in the cache, or fetched once with
``pip download``); ``dnnl_config.h`` is generated for the THREADPOOL runtime that the wheel's library uses.

The cache folder (``DDPM_MS_KERNEL_CACHE``, default ``$XDG_CACHE_HOME/ddpm_ms/kernels``) holds one ``.so`` per key: the
source's hash, the MindSpore version, the compiler flags and the CPU's instruction-set flags (the code is built
with ``-march=native``). A build writes a temporary file and renames it; a file lock makes concurrent processes
(pytest-xdist workers, msrun ranks) wait for one build instead of racing.
"""
import ctypes
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

from .. import paths
from ..errors import KernelBuildError
from . import table

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_kernels.cc")
ONEDNN_DEVEL = "onednn-devel==2025.3.0"   # headers of oneDNN 3.9; its C API matches the wheel's 3.10
CXXFLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread", *table.cxx_defines()]
_THREADPOOL_CONFIG = (("DNNL_CPU_THREADING_RUNTIME", "DNNL_RUNTIME_THREADPOOL"),
                      ("DNNL_CPU_RUNTIME", "DNNL_RUNTIME_THREADPOOL"),
                      ("DNNL_GPU_RUNTIME", "DNNL_RUNTIME_NONE"),
                      ("DNNL_GPU_VENDOR", "DNNL_VENDOR_NONE"))


def cache_dir():
    """Folder of the built libraries and the fetched headers."""
    return os.environ.get("DDPM_MS_KERNEL_CACHE") or paths.cache_dir("kernels")


def mindspore_lib_dir():
    """``mindspore/lib`` of the installed wheel, which holds ``libdnnl.so.3``."""
    import mindspore  # pylint: disable=import-outside-toplevel
    lib = os.path.join(os.path.dirname(mindspore.__file__), "lib")
    if not os.path.exists(os.path.join(lib, "libdnnl.so.3")):
        raise KernelBuildError(f"no libdnnl.so.3 in {lib} (this mindspore wheel has no CPU oneDNN)")
    return lib


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return ""


def build_key(compiler):
    """Hash of everything the built library depends on."""
    import mindspore  # pylint: disable=import-outside-toplevel
    h = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        h.update(f.read())
    for part in (mindspore.__version__, ONEDNN_DEVEL, compiler, " ".join(CXXFLAGS), _cpu_flags()):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise KernelBuildError("no C++ compiler found (set CXX, or install g++)")


class _FileLock:
    """An exclusive ``flock`` on ``path`` for the ``with`` block."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _header_dir(cache):
    """A folder with ``oneapi/dnnl/dnnl.hpp``: DDPM_MS_ONEDNN_INCLUDE, an installed onednn-devel, or fetched."""
    candidates = [os.environ.get("DDPM_MS_ONEDNN_INCLUDE"), os.path.join(sys.prefix, "include"),
                  os.path.join(cache, "onednn-devel", "include")]
    for inc in candidates:
        if inc and os.path.exists(os.path.join(inc, "oneapi", "dnnl", "dnnl.hpp")):
            return inc
    return _fetch_headers(os.path.join(cache, "onednn-devel"))


def _fetch_headers(dest):
    """Download the pinned onednn-devel wheel (headers only, no dependencies) and unpack its include folder."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", tmp,
               ONEDNN_DEVEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = glob.glob(os.path.join(tmp, "onednn_devel-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise KernelBuildError(f"could not fetch the oneDNN headers ({ONEDNN_DEVEL}): {last}")
        staged = os.path.join(tmp, "staged")
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if "/data/include/" in name and not name.endswith("/"):
                    target = os.path.join(staged, "include", name.split("/data/include/", 1)[1])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "wb") as f:
                        f.write(z.read(name))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staged, dest)
    return os.path.join(dest, "include")


def _threadpool_config(headers, out_dir):
    """Write ``oneapi/dnnl/dnnl_config.h`` for the THREADPOOL runtime under ``out_dir``; return ``out_dir``."""
    with open(os.path.join(headers, "oneapi", "dnnl", "dnnl_config.h"), encoding="utf-8") as f:
        text = f.read()
    for key, value in _THREADPOOL_CONFIG:
        text, n = re.subn(rf"#define {key} \S+", f"#define {key} {value}", text)
        if n != 1:
            raise KernelBuildError(f"unexpected dnnl_config.h in {headers}: no single '#define {key}'")
    os.makedirs(os.path.join(out_dir, "oneapi", "dnnl"), exist_ok=True)
    with open(os.path.join(out_dir, "oneapi", "dnnl", "dnnl_config.h"), "w", encoding="utf-8") as f:
        f.write(text)
    return out_dir


def _compile(compiler, target, cache):
    lib = mindspore_lib_dir()
    headers = _header_dir(cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        config = _threadpool_config(headers, os.path.join(tmp, "config"))
        out = os.path.join(tmp, os.path.basename(target))
        cmd = [compiler, *CXXFLAGS, f"-I{config}", f"-I{headers}", SOURCE, "-o", out, f"-L{lib}", "-l:libdnnl.so.3",
               f"-Wl,-rpath,{lib}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors = [l for l in proc.stderr.splitlines() if "error" in l] or proc.stderr.splitlines() or ["?"]
            raise KernelBuildError(f"compiling {os.path.basename(SOURCE)} failed: {errors[0].strip()}")
        os.replace(out, target)


def build():
    """Path of the built kernel library, compiling it first if the cache has none for this key."""
    cache = cache_dir()
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise KernelBuildError(f"cannot create the kernel cache {cache}: {e.strerror}") from None
    compiler = _compiler()
    target = os.path.join(cache, f"libddpm_ms_kernels-{build_key(compiler)}.so")
    if not os.path.exists(target):
        with _FileLock(target + ".lock"):
            if not os.path.exists(target):   # another process may have built it while we waited
                _compile(compiler, target, cache)
    check_library(target)
    return target


def exported_names(target):
    """(ABI, entry points) that the built library ``target`` reports."""
    try:
        lib = ctypes.CDLL(target)
        lib.DdpmMsKernelNames.restype = ctypes.c_char_p
        return lib.DdpmMsKernelAbi(), tuple(lib.DdpmMsKernelNames().decode().split(","))
    except (OSError, AttributeError) as e:
        raise KernelBuildError(f"cannot load {target}: {e}") from None


def check_library(target):
    """KernelBuildError unless ``target`` has the table's ABI and exports exactly the table's entry points."""
    abi, names = exported_names(target)
    if abi != table.ABI:
        raise KernelBuildError(f"{target} has kernel ABI {abi}, expected {table.ABI}")
    if sorted(names) != sorted(table.entry_points()):
        missing = sorted(set(table.entry_points()) - set(names)) or sorted(set(names) - set(table.entry_points()))
        raise KernelBuildError(f"{target} and kernels/table.py disagree on the entry points (e.g. {missing[0]})")
