"""The CPU kernel library: the same maths as MindSpore's own ops, a safe build, and a fallback that works."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

import ddpm_ms
from ddpm_ms import kernels, layers
from ddpm_ms.kernels import builder as kbuild


from conftest import ROOT, TINY


@pytest.fixture(scope="module")
def lib():
    """The built library; CI (CI=true) must build it, elsewhere a machine without a compiler skips."""
    try:
        return kbuild.build()
    except kbuild.KernelBuildError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"kernel library unavailable: {e}")


@pytest.fixture
def kernel_mode():
    """Restore the kernel mode after a test that changes it."""
    yield kernels.set_mode
    kernels.set_mode(None)


def _tutorial_layer_shapes():
    """(kind, input shape, layer args) of every distinct conv, norm and softmax in the tutorial U-Net, batch 2
    (NCHW shapes: the U-Net built in NCHW)."""
    with kernels.using(None, layout="NCHW"):
        net = ddpm_ms.Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    seen = {}

    def hook(cell, inputs):
        x = inputs[0]
        if isinstance(cell, nn.GroupNorm):
            key = ("gn", tuple(x.shape), cell.num_groups)
        elif isinstance(cell, layers.LayerNorm):
            key = ("ln", tuple(x.shape), None)
        elif isinstance(cell, layers.Softmax):
            key = ("softmax", tuple(x.shape), cell.axis)
        elif isinstance(cell, (layers.GELU, layers.SiLU)):
            key = ("act", tuple(x.shape), type(cell).__name__)
        else:
            pad = layers._symmetric_padding(cell)  # pylint: disable=protected-access
            kind = "convT" if isinstance(cell, nn.Conv2dTranspose) else "conv"
            key = (kind, tuple(x.shape), (cell.out_channels, cell.kernel_size[0], cell.stride[0], pad, cell.group))
        seen[key] = True

    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.Conv2d, nn.Conv2dTranspose, nn.GroupNorm, layers.LayerNorm, layers.Softmax,
                             layers.GELU, layers.SiLU)):
            cell.register_forward_pre_hook(hook)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net(ms.Tensor(np.zeros((2, 1, 28, 28), np.float32)), ms.Tensor(np.array([1, 2], np.int32)))
    return sorted(seen)


SHAPES = _tutorial_layer_shapes() + [("act", (2, 32, 14, 14), "SiLU")]   # the ResNet blocks' activation


def _rel(a, b):
    a, b = a.asnumpy(), b.asnumpy()
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _in_layout(op, layout):
    """op (on activations in ``layout``) as a function of an NCHW first input, giving NCHW."""
    if layout == "NCHW":
        return op

    def fn(x, *rest):
        return layers.to_nchw(layout, op(layers.from_nchw(layout, x), *rest))
    return fn


def _reference_and_fast(kind, shape, args, lib, layout="NCHW"):
    """(reference fn, fast fn, inputs): each fn maps inputs to a weighted sum of its output; the fast op runs on
    ``layout`` activations (the inputs and outputs are NCHW either way)."""
    ref, fast, inputs = _reference_and_fast_op(kind, shape, args, lib, layout)
    return ref, _in_layout(fast, layout), inputs


def _reference_and_fast_op(kind, shape, args, lib, layout):
    rng = np.random.default_rng(abs(hash((kind, shape))) % 2**32)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    if kind == "gn":
        c, g = shape[1], args
        gamma = ms.Tensor(rng.standard_normal(c).astype(np.float32))
        beta = ms.Tensor(rng.standard_normal(c).astype(np.float32))
        op = ddpm_ms.kernels.ops.group_norm(lib, g, layout)

        def ref(x, gamma, beta):
            return ops.group_norm(x, g, gamma, beta, 1e-5)

        def fast(x, gamma, beta):
            return op(x, gamma, beta)[0]

        return ref, fast, (x, gamma, beta)
    if kind == "ln":
        g = ms.Tensor(rng.uniform(0.5, 1.5, (1, shape[1], 1, 1)).astype(np.float32))
        op = ddpm_ms.kernels.ops.channel_norm(lib, layout)

        def ref(x, g):
            mean = x.mean(1, keep_dims=True)
            return (x - mean) / ops.sqrt(((x - mean) ** 2).mean(1, keep_dims=True) + 1e-5) * g

        def fast(x, g):
            return op(x, g)[0]

        return ref, fast, (x, g)
    if kind == "softmax":
        axis = args

        def ref(x):
            return ops.softmax(x, axis)

        return ref, ddpm_ms.kernels.ops.softmax(lib, axis), (x * 3,)
    if kind == "act":   # against MindSpore's own nn.GELU (tanh form) and nn.SiLU
        ref_cell = nn.GELU() if args == "GELU" else nn.SiLU()

        def ref(x):
            return ref_cell(x)

        return ref, ddpm_ms.kernels.ops.eltwise(lib, args.lower()), (x * 2,)
    out_c, k, s, p, groups = args
    in_c = shape[1]
    if kind == "conv":
        w = ms.Tensor(rng.standard_normal((out_c, in_c // groups, k, k)).astype(np.float32) * 0.1)
        ref_op = ops.Conv2D(out_c, k, pad_mode="pad", pad=p, stride=s, group=groups)
        fast_op = ddpm_ms.kernels.ops.conv2d(lib, s, p, groups, layout)
        return ref_op, fast_op, (x, w)
    w = ms.Tensor(rng.standard_normal((in_c, out_c // groups, k, k)).astype(np.float32) * 0.1)
    out_shape = (shape[0], out_c, (shape[2] - 1) * s - 2 * p + k, (shape[3] - 1) * s - 2 * p + k)
    ref_op = ops.Conv2DTranspose(out_c, k, pad_mode="pad", pad=p, stride=s, group=groups)
    fast_op = ddpm_ms.kernels.ops.conv_transpose2d(lib, s, p, groups, layout)

    def ref(x, w):
        return ref_op(x, w, out_shape)

    return ref, fast_op, (x, w)


def test_the_tutorial_unet_has_every_kind_of_layer():
    kinds = {(k, a[2], a[4] > 1) if k.startswith("conv") else (k, None, None) for k, _, a in SHAPES}
    assert ("conv", 1, True) in kinds          # the depthwise 7x7
    assert ("conv", 2, False) in kinds         # the stride-2 downsample
    assert ("convT", 2, False) in kinds        # the transposed upsample
    assert ("gn", None, None) in kinds
    assert {k for k, _, _ in SHAPES} == {"conv", "convT", "gn", "ln", "softmax", "act"}
    assert {a for k, _, a in SHAPES if k == "softmax"} == {-1, -2}
    assert len(SHAPES) > 20


def _probed(fn, probe):
    def loss(*args):
        y = fn(*args)
        return (y * probe).sum(), y
    return loss


def _outputs_and_grads(fns, inputs, seed, mode):
    """For each fn: (y, gradients of sum(y * probe) in every input), probe a fixed random tensor shaped as y;
    compiled (mode 'graph') or eager."""
    probe = ms.Tensor(np.random.default_rng(seed).standard_normal(fns[0](*inputs).shape).astype(np.float32))
    out = []
    for fn in fns:
        grad = ms.value_and_grad(_probed(fn, probe), grad_position=tuple(range(len(inputs))), has_aux=True)
        (_, y), g = ms.jit(grad)(*inputs) if mode == "graph" else grad(*inputs)
        out.append((y, g))
    return out


LAYOUT_CASES = [(layout, *case) for layout in kernels.LAYOUTS for case in SHAPES
                if layout == "NCHW" or case[0] in ("conv", "convT", "gn", "ln")]   # softmax, GELU: any layout


@pytest.mark.parametrize("layout,kind,shape,args", LAYOUT_CASES, ids=[f"{l}-{k}{s}{a}" for l, k, s, a in LAYOUT_CASES])
def test_kernel_matches_mindspore(layout, kind, shape, args, lib, mode):
    """Output within 1e-5 and input/weight gradients within 1e-4 of MindSpore's op with autodiff (relative to max),
    the kernel on NCHW and on NHWC activations."""
    ref, fast, inputs = _reference_and_fast(kind, shape, args, lib, layout)
    (y_ref, g_ref), (y_fast, g_fast) = _outputs_and_grads((ref, fast), inputs, 7, mode)
    assert float(np.abs(y_ref.asnumpy()).max()) > 1e-3
    assert _rel(y_fast, y_ref) < 1e-5
    for a, b in zip(g_fast, g_ref):
        assert _rel(a, b) < 1e-4


@pytest.mark.parametrize("modulated", [True, False], ids=["modulated", "plain"])
@pytest.mark.parametrize("layout", kernels.LAYOUTS)
@pytest.mark.parametrize("shape,groups", [((4, 32, 14, 14), 8), ((2, 16, 28, 28), 8), ((3, 12, 7, 7), 1)])
def test_group_norm_silu_matches_mindspore(shape, groups, layout, modulated, lib, mode):
    """The fused norm + time modulation + SiLU of a ResNet block against GroupNorm, mul-add and SiLU with autodiff;
    ss [N, 2C] is the time MLP's output, (scale, shift) its halves (modulated=False: no modulation)."""
    rng = np.random.default_rng(5)
    n, c = shape[:2]
    x, gamma, beta, ss = (ms.Tensor(a.astype(np.float32)) for a in (
        rng.standard_normal(shape) * 3 + 1, rng.standard_normal(c), rng.standard_normal(c),
        np.concatenate([rng.standard_normal((n, c)) * 0.5, rng.standard_normal((n, c))], 1)))
    probe = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    op = ddpm_ms.kernels.ops.group_norm_silu(lib, groups, layout, modulated)

    def ref(x, gamma, beta, ss):
        y = ops.group_norm(x, groups, gamma, beta, 1e-5)
        if modulated:
            y = y * (ss[:, :c].reshape(n, c, 1, 1) + 1) + ss[:, c:].reshape(n, c, 1, 1)
        return ops.silu(y)

    def fast(x, gamma, beta, ss):
        args = (layers.from_nchw(layout, x), gamma, beta)
        y = op(*args, ss)[0] if modulated else op(*args)[0] + 0 * ss.sum()
        return layers.to_nchw(layout, y)

    results = []
    for fn in (ref, fast):
        grad = ms.value_and_grad(_probed(fn, probe), grad_position=(0, 1, 2, 3), has_aux=True)
        results.append(ms.jit(grad)(x, gamma, beta, ss) if mode == "graph" else grad(x, gamma, beta, ss))
    (_, y_ref), g_ref = results[0]
    (_, y_fast), g_fast = results[1]
    assert _rel(y_fast, y_ref) < 1e-5
    for a, b in zip(g_fast, g_ref):
        if modulated or float(np.abs(b.asnumpy()).max()) > 0:
            assert _rel(a, b) < 1e-4
        else:
            assert float(np.abs(a.asnumpy()).max()) == 0


BIAS_CONVS = [((2, 16, 28, 28), 16, 7, 1, 3, 1), ((2, 8, 14, 14), 16, 1, 1, 0, 1), ((3, 32, 7, 7), 64, 3, 1, 1, 1),
              ((2, 20, 14, 14), 20, 7, 1, 3, 20), ((3, 24, 14, 13), 24, 5, 2, 1, 24)]   # + the depthwise 7x7 and 5x5


@pytest.mark.parametrize("layout", kernels.LAYOUTS)
@pytest.mark.parametrize("shape,out_c,k,s,p,groups", BIAS_CONVS, ids=[str(c[:3]) for c in BIAS_CONVS])
def test_conv_with_bias_matches_mindspore(shape, out_c, k, s, p, groups, layout, lib, mode):
    """conv + bias in one kernel (oneDNN's bias argument, db from the weights' backward) against Conv2D + BiasAdd
    with autodiff: y, dx, dw and db."""
    rng = np.random.default_rng(out_c + k)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    w = ms.Tensor(rng.standard_normal((out_c, shape[1] // groups, k, k)).astype(np.float32) * 0.1)
    b = ms.Tensor(rng.standard_normal(out_c).astype(np.float32))
    ref_conv = ops.Conv2D(out_c, k, pad_mode="pad", pad=p, stride=s, group=groups)
    op = ddpm_ms.kernels.ops.conv2d(lib, s, p, groups, layout, True)

    def ref(x, w, b):
        return ops.bias_add(ref_conv(x, w), b)

    fast = _in_layout(op, layout)
    probe = ms.Tensor(rng.standard_normal(ref(x, w, b).shape).astype(np.float32))
    results = []
    for fn in (ref, fast):
        grad = ms.value_and_grad(_probed(fn, probe), grad_position=(0, 1, 2), has_aux=True)
        results.append(ms.jit(grad)(x, w, b) if mode == "graph" else grad(x, w, b))
    (_, y_ref), g_ref = results[0]
    (_, y_fast), g_fast = results[1]
    assert _rel(y_fast, y_ref) < 1e-5
    for a, r in zip(g_fast, g_ref):
        assert a.shape == r.shape and _rel(a, r) < 1e-4


def _residual_case(kind, layout, lib, rng):
    """(reference f(x, params) + r on MindSpore's ops, the kernel with the add inside, the inputs in NCHW)."""
    x = ms.Tensor(rng.standard_normal((2, 16, 14, 14)).astype(np.float32) * 2)
    r = ms.Tensor(rng.standard_normal((2, 24 if kind.startswith("conv") else 16, 14, 14)).astype(np.float32))
    gain = ms.Tensor(rng.uniform(0.5, 1.5, 16).astype(np.float32))
    beta = ms.Tensor(rng.standard_normal(16).astype(np.float32))
    k = 3 if kind == "conv" else 1
    w = ms.Tensor(rng.standard_normal((24, 16, k, k)).astype(np.float32) * 0.1)
    b = ms.Tensor(rng.standard_normal(24).astype(np.float32))
    conv = ops.Conv2D(24, k, pad_mode="pad", pad=k // 2)
    if kind == "conv":
        op = ddpm_ms.kernels.ops.conv2d(lib, 1, 1, 1, layout, False, True)

        def ref(x, w, r):
            return conv(x, w) + r

        def fast(x, w, r):
            return layers.to_nchw(layout, op(layers.from_nchw(layout, x), w, layers.from_nchw(layout, r)))

        return ref, fast, (x, w, r)
    if kind == "conv_bias":
        op = ddpm_ms.kernels.ops.conv2d(lib, 1, 0, 1, layout, True, True)

        def ref(x, w, b, r):
            return ops.bias_add(conv(x, w), b) + r

        def fast(x, w, b, r):
            return layers.to_nchw(layout, op(layers.from_nchw(layout, x), w, b, layers.from_nchw(layout, r)))

        return ref, fast, (x, w, b, r)
    if kind == "gn_silu":
        op = ddpm_ms.kernels.ops.group_norm_silu(lib, 4, layout, False, True)

        def ref(x, g, b, r):
            return ops.silu(ops.group_norm(x, 4, g, b, 1e-5)) + r

        def fast(x, g, b, r):
            return layers.to_nchw(layout, op(layers.from_nchw(layout, x), g, b, layers.from_nchw(layout, r))[0])

        return ref, fast, (x, gain, beta, r)
    op = ddpm_ms.kernels.ops.channel_norm(lib, layout, True)

    def ref(x, g, r):
        mean = x.mean(1, keep_dims=True)
        return (x - mean) / ops.sqrt(((x - mean) ** 2).mean(1, keep_dims=True) + 1e-5) * g.reshape(1, -1, 1, 1) + r

    def fast(x, g, r):
        return layers.to_nchw(layout, op(layers.from_nchw(layout, x), g, layers.from_nchw(layout, r))[0])

    return ref, fast, (x, gain, r)


@pytest.mark.parametrize("layout", kernels.LAYOUTS)
@pytest.mark.parametrize("kind", ["conv", "conv_bias", "gn_silu", "ln"])
def test_residual_add_inside_the_kernel_matches_mindspore(kind, layout, lib, mode):
    """y = f(x) + r with the add inside the kernel (a 3x3 conv, a 1x1 conv with bias, a ResNet block's second norm,
    the channel LayerNorm) against f on MindSpore's ops plus r, with autodiff: y within 1e-5, every gradient (dr
    included) within 1e-4."""
    ref, fast, inputs = _residual_case(kind, layout, lib, np.random.default_rng(len(kind)))
    (y_ref, g_ref), (y_fast, g_fast) = _outputs_and_grads((ref, fast), inputs, 9, mode)
    assert _rel(y_fast, y_ref) < 1e-5
    for a, b in zip(g_fast, g_ref):
        assert a.shape == b.shape and _rel(a, b) < 1e-4


ATTENTION_SHAPES = [(2, 49, 3, 4, 16), (3, 196, 3, 2, 8), (2, 64, 3, 1, 32)]   # [B, N, 3, heads, D]


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_attention_matches_mindspore(kind, shape, lib, mode):
    """The fused channels-last attention against the same formula in MindSpore's ops (transposes, BatchMatMul,
    softmax) with autodiff: output within 1e-5, dqkv within 1e-4."""
    rng = np.random.default_rng(len(kind) + shape[1])
    qkv = ms.Tensor(rng.standard_normal(shape).astype(np.float32) * 2)
    probe = ms.Tensor(rng.standard_normal((shape[0], shape[1], shape[3], shape[4])).astype(np.float32))
    cells = []
    for m in ("onednn", "off"):
        with kernels.using(m):
            cells.append(layers.HeadAttention(kind))
    assert cells[0].fast is not None and cells[1].fast is None
    results = []
    for cell in cells:
        grad = ms.value_and_grad(_probed(cell, probe), 0, has_aux=True)
        results.append(ms.jit(grad)(qkv) if mode == "graph" else grad(qkv))
    (_, y_fast), g_fast = results[0]
    (_, y_ref), g_ref = results[1]
    assert float(np.abs(y_ref.asnumpy()).max()) > 1e-3
    assert _rel(y_fast, y_ref) < 1e-5
    assert _rel(g_fast, g_ref) < 1e-4


@pytest.mark.parametrize("batch,widths", [(4, (32, 16, 48)), (3, (7,)), (1, (64, 128, 64, 17, 32))], ids=str)
def test_dense_many_matches_mindspore(batch, widths, lib, mode):
    """n Dense layers on one input in one op against ops.dense per layer with autodiff: every output, dx, every dw
    and db within 1e-5."""
    rng = np.random.default_rng(len(widths))
    k, n = 24, len(widths)
    x = ms.Tensor(rng.standard_normal((batch, k)).astype(np.float32))
    ws = [ms.Parameter(rng.standard_normal((o, k)).astype(np.float32) * 0.3, name=f"w{i}") for i, o in enumerate(widths)]
    bs = [ms.Parameter(rng.standard_normal(o).astype(np.float32), name=f"b{i}") for i, o in enumerate(widths)]
    probes = [ms.Tensor(rng.standard_normal((batch, o)).astype(np.float32)) for o in widths]
    op = ddpm_ms.kernels.ops.dense_many(lib, n)

    def ref(x):
        return tuple(ops.dense(x, w, b) for w, b in zip(ws, bs))

    def fast(x):
        return op(x, *ws, *bs)

    def probed(fn):
        def loss(x):
            ys = fn(x)
            return sum(((y * p).sum() for y, p in zip(ys, probes))), ys
        return loss

    results = []
    for fn in (ref, fast):
        grad = ms.value_and_grad(probed(fn), 0, ms.ParameterTuple(ws + bs), has_aux=True)
        (_, ys), (dx, dparams) = ms.jit(grad)(x) if mode == "graph" else grad(x)
        results.append((ys, [dx, *dparams]))
    (ys_ref, g_ref), (ys_fast, g_fast) = results
    assert len(ys_fast) == n and len(g_fast) == 1 + 2 * n
    for a, r in zip(list(ys_fast) + g_fast, list(ys_ref) + g_ref):
        assert a.shape == r.shape and _rel(a, r) < 1e-5


def _two_paths(layout="NHWC", **kw):
    """The same U-Net built on the fast path (activations in ``layout``) and the fallback path, same weights."""
    nets = []
    for m in ("onednn", "off"):
        with kernels.using(m, layout=layout if m == "onednn" else None):
            ms.set_seed(3)
            nets.append(ddpm_ms.Unet(**kw))
    fast, plain = nets
    assert (fast.layout, plain.layout) == (layout, "NCHW")
    assert sum(1 for _, c in fast.cells_and_names() if getattr(c, "fast", None) is not None) > 10
    assert all(getattr(c, "fast", None) is None for _, c in plain.cells_and_names())
    for a, b in zip(fast.get_parameters(), plain.get_parameters()):
        assert a.name == b.name and a.shape == b.shape
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())   # same names, shapes and initialisation
    return fast, plain


def _loss_of(net, sched):
    def loss(x0, t, noise):
        return ddpm_ms.p_losses(sched, net, x0, t, noise, "huber")
    return loss


@pytest.mark.parametrize("layout", kernels.LAYOUTS)
@pytest.mark.parametrize("block_type", ["convnext", "resnet"])
def test_whole_unet_loss_and_grads_match_fallback(block_type, layout, lib, mode):
    """The U-Net on the kernels, its activations NHWC or NCHW, against MindSpore's ops: loss and every gradient."""
    fast, plain = _two_paths(layout, dim=16, dim_mults=(1, 2), channels=1, block_type=block_type, attn_dim_head=16)
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 50)
    rng = np.random.default_rng(0)
    x0 = ms.Tensor(rng.uniform(-1, 1, (4, 1, 16, 16)).astype(np.float32))
    t = ms.Tensor(np.array([0, 7, 30, 49], np.int32))
    noise = ms.Tensor(rng.standard_normal((4, 1, 16, 16)).astype(np.float32))
    out = []
    for net in (fast, plain):
        net.set_train(True)
        fn = ms.value_and_grad(_loss_of(net, sched), None, net.trainable_params())
        loss, grads = ms.jit(fn)(x0, t, noise) if mode == "graph" else fn(x0, t, noise)
        out.append((float(loss.asnumpy()), [g.asnumpy() for g in grads]))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    for gf, gp in zip(out[0][1], out[1][1]):
        assert np.abs(gf - gp).max() <= 1e-4 * np.abs(gp).max() + 1e-7


def test_fallback_without_compiler(tmp_path, monkeypatch, kernel_mode, capfd, tiny_sched):
    """No compiler: one warning line, MindSpore's ops, and the model still trains and samples."""
    monkeypatch.setenv("DDPM_MS_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: None)
    kernel_mode(None)
    capfd.readouterr()
    ms.set_seed(0)
    net = ddpm_ms.Unet(**TINY)
    ddpm_ms.Unet(**TINY)                                      # a second model: no second warning
    err = capfd.readouterr().err
    lines = [l for l in err.splitlines() if "ddpm_ms" in l]
    assert len(lines) == 1, err
    assert lines[0].startswith("warning: ddpm_ms:") and "no C++ compiler" in lines[0]
    assert all(getattr(c, "fast", None) is None for _, c in net.cells_and_names())
    opt = nn.Adam(net.trainable_params(), 1e-3)
    step = ddpm_ms.TrainStep(net, tiny_sched, opt, ms.amp.DynamicLossScaler(1024, 2, 100), jit=False)
    x0 = ms.Tensor(np.zeros((2, 1, 8, 8), np.float32))
    loss, finite = step(x0, ms.Tensor(np.array([1, 5], np.int32)), ms.Tensor(np.ones((2, 1, 8, 8), np.float32)))
    assert np.isfinite(loss.asnumpy()) and bool(finite.asnumpy())
    out = ddpm_ms.sample(net, tiny_sched, 8, 2, 1, seed=0, progress=False)
    assert out.shape == (2, 1, 8, 8) and np.isfinite(out).all()
    kernel_mode("onednn")                                      # forced: an error naming the cause instead
    with pytest.raises(kbuild.KernelBuildError, match="no C\\+\\+ compiler"):
        ddpm_ms.Unet(**TINY)


def test_bad_mode_is_one_line_error(monkeypatch, kernel_mode):
    monkeypatch.setenv("DDPM_MS_KERNELS", "fast")
    kernel_mode(None)
    with pytest.raises(kbuild.KernelBuildError, match="DDPM_MS_KERNELS must be one of auto, onednn, off"):
        ddpm_ms.Unet(**TINY)


def test_bad_layout_is_one_line_error(monkeypatch, lib, kernel_mode):
    monkeypatch.setenv("DDPM_MS_LAYOUT", "NWHC")
    kernel_mode("onednn")
    with pytest.raises(kbuild.KernelBuildError, match="DDPM_MS_LAYOUT must be one of NHWC, NCHW, got 'NWHC'"):
        ddpm_ms.Unet(**TINY)
    with pytest.raises(ValueError, match="layout must be one of"):
        kernels.set_layout("nhwc")


def test_layout_follows_the_path_and_the_setting(monkeypatch, lib, kernel_mode):
    """NHWC on the kernels by default, NCHW when asked or on MindSpore's ops; a layer built alone is NCHW."""
    monkeypatch.delenv("DDPM_MS_LAYOUT", raising=False)
    kernel_mode("onednn")
    net = ddpm_ms.Unet(**TINY)
    assert net.layout == "NHWC" and net.init_conv.layout == "NHWC" and net.init_conv.fast.func.endswith("_nhwc")
    assert layers.Conv2d(4, 4, 3, pad_mode="pad", padding=1).layout == "NCHW"   # a drop-in for nn.Conv2d
    monkeypatch.setenv("DDPM_MS_LAYOUT", "NCHW")
    assert ddpm_ms.Unet(**TINY).layout == "NCHW"
    monkeypatch.delenv("DDPM_MS_LAYOUT")
    with kernels.using(None, layout="NCHW"):
        assert ddpm_ms.Unet(**TINY).layout == "NCHW"
    assert kernels.layout() == "NHWC"
    kernel_mode("off")
    assert ddpm_ms.Unet(**TINY).layout == "NCHW"


def test_nhwc_layer_off_its_kernel_runs_mindspores_op(lib, kernel_mode):
    """An NHWC conv whose input does not fit its kernel (odd size, stride 2) runs MindSpore's op between transposes."""
    kernel_mode("onednn")
    rng = np.random.default_rng(4)
    with layers.activation_layout("NHWC"):
        conv = layers.Conv2d(3, 5, 4, 2, pad_mode="pad", padding=1, has_bias=True)
    ref = nn.Conv2d(3, 5, 4, 2, pad_mode="pad", padding=1, has_bias=True)
    for p, q in zip(conv.get_parameters(), ref.get_parameters()):
        q.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32)))
        p.set_data(q.data)
    x = ms.Tensor(rng.standard_normal((2, 3, 7, 7)).astype(np.float32))
    y = conv(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert conv.fast is not None and y.shape == (2, 5, 3, 3)
    np.testing.assert_allclose(y.asnumpy(), ref(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_concurrent_builds_make_one_library(tmp_path, lib):
    """Two processes building into an empty cache at once both get the same, complete library."""
    env = dict(os.environ, DDPM_MS_KERNEL_CACHE=str(tmp_path),
               DDPM_MS_ONEDNN_INCLUDE=kbuild._header_dir(kbuild.cache_dir()))  # pylint: disable=protected-access
    code = "from ddpm_ms.kernels import build; print(build())"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".so")) == [os.path.basename(paths.pop())]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tmp")]    # no half-written leftovers


def test_build_key_follows_source_and_flags(monkeypatch):
    key = kbuild.build_key("g++")
    assert key == kbuild.build_key("g++")
    assert key != kbuild.build_key("clang++")
    monkeypatch.setattr(kbuild, "CXXFLAGS", kbuild.CXXFLAGS + ["-DX"])
    assert key != kbuild.build_key("g++")


@pytest.mark.parametrize("layout", kernels.LAYOUTS)
def test_checkpoint_loads_across_paths(tmp_path, lib, layout):
    """Weights saved from the fast path (either layout) load into the fallback model and give the same output."""
    fast, plain = _two_paths(layout, **TINY)
    rng = np.random.default_rng(1)
    for p in fast.get_parameters():     # move off the shared initialisation
        p.set_data(ms.Tensor(p.asnumpy() + rng.normal(0, 0.01, p.shape).astype(np.float32)))
    path = str(tmp_path / "w.ckpt")
    ms.save_checkpoint(fast, path)
    ms.load_param_into_net(plain, ms.load_checkpoint(path), strict_load=True)
    x = ms.Tensor(rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32))
    t = ms.Tensor(np.array([2, 9], np.int32))
    fast.set_train(False)
    plain.set_train(False)
    np.testing.assert_allclose(fast(x, t).asnumpy(), plain(x, t).asnumpy(), atol=1e-5)


@pytest.mark.parametrize("kernel_env,expected", [("off", "AVX2"), ("onednn", None)])
def test_isa_cap_only_on_the_fallback_path(kernel_env, expected, lib):
    """MindSpore's own NCHW convolutions need oneDNN capped at AVX2; the kernels run uncapped."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env["DDPM_MS_KERNELS"] = kernel_env
    code = ("import os, ddpm_ms; assert 'ONEDNN_MAX_CPU_ISA' not in os.environ; "
            "ddpm_ms.Unet(dim=8, dim_mults=(1, 2), channels=1); print(os.environ.get('ONEDNN_MAX_CPU_ISA'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(expected)


def test_the_thread_pool_runs_every_item_once_under_load(lib):
    """The kernels' thread pool, 300k parallel loops of 2-4 items while two Python threads compete for the cores:
    every item runs exactly once and no loop hangs. (A worker descheduled inside a finished loop used to take the
    next loop's first item while its counters were reset: the count was lost and training hung at step 1602.)"""
    code = ("import ctypes, sys, threading\n"
            "stop = False\n"
            "def hog():\n    while not stop: sum(range(1000))\n"
            "hogs = [threading.Thread(target=hog) for _ in range(2)]\n"
            "[h.start() for h in hogs]\n"
            "f = ctypes.CDLL(sys.argv[1]).DdpmMsPoolStress\n"
            "f.restype, f.argtypes = ctypes.c_int64, [ctypes.c_int64]\n"
            "wrong = f(300000)\n"
            "stop = True\n[h.join() for h in hogs]\nprint(wrong)")
    proc = subprocess.run([sys.executable, "-c", code, lib], capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0 and proc.stdout.split() == ["0"], (proc.stdout, proc.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs and sched_setaffinity")
@pytest.mark.parametrize("env,expected", [({}, 1), ({"DDPM_MS_KERNEL_THREADS": "3"}, 3)])
def test_kernel_threads_follow_the_allowed_cpus(lib, env, expected):
    """Pinned to one CPU (taskset -c 0), the kernels run one thread, not one per CPU of the machine; the variable
    overrides."""
    code = ("import ctypes, os, sys\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "print(ctypes.CDLL(sys.argv[1]).DdpmMsKernelThreads())")
    clean = {k: v for k, v in os.environ.items() if k != "DDPM_MS_KERNEL_THREADS"}
    proc = subprocess.run([sys.executable, "-c", code, lib], capture_output=True, text=True, timeout=60,
                          env={**clean, **env}, check=False)
    assert proc.returncode == 0 and proc.stdout.split() == [str(expected)], proc.stderr[-2000:]


def test_library_exports_exactly_the_kernel_table(lib):
    """The .so reports its ABI and entry points; they are the table's, in order (one place for each fact)."""
    from ddpm_ms.kernels import table
    abi, names = kbuild.exported_names(lib)
    assert abi == table.ABI and names == table.entry_points()
    # 8 conv entries per geometry (4, 2 with a bias, 2 adding a residual) and 10 norm entries, in each layout;
    # softmax, activations,
    # Adam, the EMA, the two attentions and the Dense layers once
    assert len(names) == (8 * len(table.CONV_GEOMETRIES) + 10) * len(table.LAYOUTS) + 16
    assert layers.CONV_GEOMETRIES is table.CONV_GEOMETRIES


def test_loader_refuses_a_library_that_disagrees_with_the_table(lib, monkeypatch):
    from ddpm_ms.kernels import table
    monkeypatch.setattr(table, "entry_points", lambda: ("ConvFwd_s3p3",) + kbuild.exported_names(lib)[1])
    with pytest.raises(kbuild.KernelBuildError, match="disagree on the entry points .e.g. ConvFwd_s3p3"):
        kbuild.check_library(lib)
    monkeypatch.undo()
    monkeypatch.setattr(table, "ABI", table.ABI + 1)
    with pytest.raises(kbuild.KernelBuildError, match="kernel ABI"):
        kbuild.check_library(lib)
