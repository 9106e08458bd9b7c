"""Fast CPU kernels as MindSpore AOT custom ops: convolutions on the wheel's oneDNN, GroupNorm (alone and fused
with a ResNet block's modulation and SiLU), the channel LayerNorm, softmax, GELU, SiLU and channels-last multi-head
attention (softmax and linear), each with its backward.

MindSpore's CPU Conv2D hands oneDNN plain NCHW/OIHW layouts, which on AVX-512 machines land on a reference or
im2col kernel. These kernels give the same oneDNN NHWC activations and its own weight layout, so it picks its JIT
kernels; the maths is unchanged (see ``tests/test_kernels.py``). The layers that use them: :mod:`ddpm_ms.layers`.

Which path runs is chosen when a layer is built:

- ``DDPM_MS_KERNELS=auto`` (default): the kernels on CPU if they build; otherwise MindSpore's ops, with one
  warning line saying why.
- ``DDPM_MS_KERNELS=onednn``: the kernels or an error (:class:`KernelBuildError`).
- ``DDPM_MS_KERNELS=off``: MindSpore's ops.

``set_mode`` does the same from Python (for layers built afterwards). Both paths hold the same parameters, so a
checkpoint written on one loads on the other, and on GPU or Ascend.

On the kernels, a model's activations are NHWC (channels-last) between its layers, so no convolution reorders its
input or output; ``DDPM_MS_LAYOUT=NCHW`` (or ``set_layout('NCHW')``) keeps MindSpore's NCHW. The model's inputs,
outputs and parameters are NCHW/OIHW either way (:func:`layout`).
"""
import os
from contextlib import contextmanager
import sys

from .builder import KernelBuildError, build

MODES = ("auto", "onednn", "off")
LAYOUTS = ("NHWC", "NCHW")
_ENV = "DDPM_MS_KERNELS"
_LAYOUT_ENV = "DDPM_MS_LAYOUT"
_state = {"mode": None, "lib": None, "reason": None, "warned": False, "layout": None}


def mode():
    """The requested mode: ``set_mode``'s, else ``$DDPM_MS_KERNELS``, else 'auto'."""
    m = _state["mode"] or os.environ.get(_ENV, "auto")
    if m not in MODES:
        raise KernelBuildError(f"{_ENV} must be one of {', '.join(MODES)}, got {m!r}")
    return m


def set_mode(m):
    """Choose the path for layers built from now on: 'auto', 'onednn' or 'off' (None: back to the environment)."""
    if m is not None and m not in MODES:
        raise ValueError(f"kernel mode must be one of {MODES}, got {m!r}")
    _state.update(mode=m, lib=None, reason=None, warned=False)


def set_layout(layout):
    """The activation layout of models built from now on, on the kernels: 'NHWC' or 'NCHW' (None: the environment)."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _state["layout"] = layout


def layout():
    """The activation layout of layers built now: 'NCHW' on MindSpore's ops; on the kernels ``set_layout``'s, else
    ``$DDPM_MS_LAYOUT``, else 'NHWC'."""
    if library() is None:
        return "NCHW"
    chosen = _state["layout"] or os.environ.get(_LAYOUT_ENV, "NHWC").upper()
    if chosen not in LAYOUTS:
        raise KernelBuildError(f"{_LAYOUT_ENV} must be one of {', '.join(LAYOUTS)}, got {chosen!r}")
    return chosen


@contextmanager
def using(m, layout=None):  # pylint: disable=redefined-outer-name
    """Build layers in mode ``m`` (and ``layout``, if given) inside the block (e.g. 'off' for a graph to export),
    then restore both."""
    previous, previous_layout = _state["mode"], _state["layout"]
    set_mode(m)
    if layout is not None:
        set_layout(layout)
    try:
        yield
    finally:
        set_mode(previous)
        set_layout(previous_layout)


def _device():
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    return ms.get_context("device_target")


def _cap_isa():
    """Cap oneDNN at AVX2 for MindSpore's own convolutions (unless the user chose an ISA).

    On AVX-512 CPUs MindSpore 2.10 hands oneDNN plain NCHW convolutions that land on a reference kernel
    ("jit_uni_ncsp:conv+ref", ~100x slower than the AVX2 gemm path). oneDNN reads the variable once, at its first
    primitive, so this must happen before the model first runs; layers call it when they are built. The fast
    kernels need no cap: with them the whole process keeps AVX-512 (about 1.2x faster measured).
    """
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


def library():
    """Path of the kernel library if the fast path is to be used, else None (after one warning line)."""
    m = mode()
    if m == "off":
        _cap_isa()
        return None
    if _state["lib"] is not None:
        return _state["lib"]
    if _state["reason"] is None:
        device = _device()
        if device != "CPU":
            _state["reason"] = f"the device is {device}; the fast kernels are CPU-only"
        else:
            try:
                _state["lib"] = build()
                return _state["lib"]
            except KernelBuildError as e:
                _state["reason"] = str(e)
    if m == "onednn":
        raise KernelBuildError(f"{_ENV}=onednn but the fast kernels cannot be used: {_state['reason']}")
    _cap_isa()
    if not _state["warned"]:
        _state["warned"] = True
        print(f"warning: ddpm_ms: using MindSpore's own ops ({_state['reason']})",
              file=sys.stderr, flush=True)
    return None


def status():
    """One line: which path layers built now get, and why."""
    lib = library()
    return (f"oneDNN kernels, {layout()} activations ({lib})" if lib
            else f"MindSpore ops ({_state['reason'] or _ENV + '=off'})")


__all__ = ["KernelBuildError", "LAYOUTS", "MODES", "build", "layout", "library", "mode", "set_layout", "set_mode",
           "status"]
