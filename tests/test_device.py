"""Device selection and mixed precision: what a CPU machine can check (mindspore.set_device is monkeypatched)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import amp, nn

import ddpm_ms
from ddpm_ms import device
from ddpm_ms.commands import run
from ddpm_ms.config import ConfigError, load_config
from ddpm_ms.batches import step_noise
from ddpm_ms.train_step import TrainStep, mixed_precision


from conftest import ROOT, TINY, TINY_YAML, batch


class _Stop(Exception):
    """Raised by the fake set_device so that a command stops right after choosing its device."""


@pytest.fixture
def fake_device(monkeypatch):
    """ms.set_device records its call and makes get_context report that target; CPU settings are unset."""
    calls = []

    def set_device(target, device_id=None):
        calls.append((target, device_id))

    real_get = ms.get_context
    monkeypatch.setattr(device, "available", lambda target: True)
    monkeypatch.setattr(ms, "set_device", set_device)
    monkeypatch.setattr(ms, "get_context", lambda key: calls[-1][0] if key == "device_target" and calls
                        else real_get(key))
    monkeypatch.delenv("MS_DEV_HOST_BLOCKING_RUN", raising=False)
    return calls


@pytest.mark.parametrize("target", ["GPU", "Ascend"])
def test_accelerators_get_set_device_and_no_cpu_settings(fake_device, target):
    assert device.use_device(target) == target
    assert fake_device == [(target, None)]                      # None: msrun gives each rank its device
    assert "MS_DEV_HOST_BLOCKING_RUN" not in os.environ


def test_cpu_gets_the_cpu_settings(fake_device):
    assert device.use_device("CPU") == "CPU"
    assert fake_device == [("CPU", None)] and os.environ["MS_DEV_HOST_BLOCKING_RUN"] == "1"


def test_auto_keeps_the_default_target(fake_device):
    assert device.use_device("auto") == ms.get_context("device_target")
    assert fake_device == []
    with pytest.raises(ConfigError, match="'TPU' is not one of auto, CPU, GPU, Ascend"):
        device.use_device("TPU")


@pytest.mark.parametrize("command,args", [
    ("train", ["--config", "tiny.yaml", "--device", "GPU"]),
    ("train", ["--config", "tiny.yaml", "--set", "train.device=Ascend"]),
    ("sample", ["--ckpt", "x.ckpt", "--device", "Ascend"]),
    ("evaluate", ["--ckpt", "x.ckpt", "--device", "GPU"]),
    ("export", ["--ckpt", "x.ckpt", "--device", "GPU"]),
    ("compare-samplers", ["--ckpt", "x.ckpt", "--device", "GPU"]),
])
def test_every_command_passes_its_device_to_set_device(monkeypatch, command, args):
    seen = []

    def set_device(target, device_id=None):
        seen.append(target)
        raise _Stop

    monkeypatch.setattr(ms, "set_device", set_device)
    monkeypatch.setattr(device, "available", lambda target: True)
    with pytest.raises(_Stop):
        run(command, args)
    assert seen == [args[-1].split("=")[-1]]


def test_a_missing_accelerator_is_one_line(capfd):
    missing = [t for t in ("GPU", "Ascend") if not device.available(t)]
    if not missing:
        pytest.skip("this machine has both accelerators")
    assert capfd.readouterr().err == ""                         # MindSpore's own complaints are held back
    with pytest.raises(ConfigError, match=f"device {missing[0]} is not available to this MindSpore"):
        device.use_device(missing[0])
    assert run("sample", ["--ckpt", "x.ckpt", "--device", missing[0]]) == 2
    err = [l for l in capfd.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: device {missing[0]} is not available"), err


def test_importing_ddpm_ms_changes_no_mindspore_setting():
    env = {k: v for k, v in os.environ.items() if k not in ("MS_DEV_HOST_BLOCKING_RUN", "ONEDNN_MAX_CPU_ISA")}
    code = ("import os, ddpm_ms; net = ddpm_ms.Unet(dim=8, dim_mults=(1, 2), channels=1); "
            "print(os.environ.get('MS_DEV_HOST_BLOCKING_RUN'), os.environ.get('ONEDNN_MAX_CPU_ISA'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300, check=True).stdout.split()
    assert out == ["None", "None"]


def test_amp_levels_on_cpu(monkeypatch):
    ms.set_seed(0)
    with_kernels = ddpm_ms.Unet(**TINY)
    with pytest.raises(ConfigError, match="O1 does not run on CPU"):
        mixed_precision(with_kernels, "O1")
    if any(getattr(c, "fast", None) is not None for _, c in with_kernels.cells_and_names()):
        with pytest.raises(ConfigError, match="DDPM_MS_KERNELS=off"):
            mixed_precision(with_kernels, "O2")
    assert mixed_precision(with_kernels, "O0") is with_kernels
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, ["train.amp=O4"])


@pytest.fixture
def ms_ops():
    """Layers built on MindSpore's own ops (float16 capable) inside the test."""
    ddpm_ms.kernels.set_mode("off")
    yield
    ddpm_ms.kernels.set_mode(None)


def test_loss_scaler_skips_and_halves_on_float16_overflow(ms_ops):
    """At O3 a loss scale of 2^24 overflows float16 gradients (not float32 ones): the step is skipped, the scale
    halves, and once it is small enough the float32 master weights move."""
    x0 = batch((4, 1, 28, 28))
    t, noise = step_noise(0, 0, x0.shape, 10)
    results = {}
    for level in ("O0", "O3"):
        ms.set_seed(0)
        model = ddpm_ms.Unet(**TINY)
        before = [p.asnumpy().copy() for p in model.trainable_params()]
        opt = nn.SGD(model.trainable_params(), learning_rate=1e-3)
        scaler = amp.DynamicLossScaler(2.0 ** 24, 2, 1000)
        step = TrainStep(mixed_precision(model, level), ddpm_ms.NoiseSchedule.from_name("linear", 10), opt, scaler,
                         jit=level == "O3")         # the float32 control runs eagerly: one compile, not two
        finite = [bool(step(x0, t, noise)[1].asnumpy()) for _ in range(12)]
        results[level] = (finite, float(scaler.scale_value.asnumpy()), before, model)
    assert results["O0"][0] == [True] * 12 and results["O0"][1] == 2.0 ** 24      # float32: no overflow
    finite, scale, before, model = results["O3"]
    skipped = finite.index(True)
    assert skipped >= 1 and not any(finite[:skipped]) and all(finite[skipped:])
    assert scale == 2.0 ** 24 / 2 ** skipped
    assert all(p.dtype == ms.float32 for p in model.trainable_params())            # master weights stay fp32
    assert any(not np.array_equal(b, p.asnumpy()) for b, p in zip(before, model.trainable_params()))


def test_float16_run_checkpoint_round_trips(ms_ops, data_dir, tmp_path):
    cfg = load_config(TINY_YAML,
                      [f"train.out_dir={tmp_path}", "train.amp=O2", "train.max_steps=3", "train.gif=false",
                       "train.sample_num=2", "train.jit=false"])   # eager: the test above compiles float16
    trainer = ddpm_ms.Trainer.from_config(cfg)
    path = trainer.fit(progress=False)["checkpoint"]
    data = ddpm_ms.checkpoint.read_checkpoint(path)
    for p in trainer.run.model.trainable_params():
        assert data[p.name].dtype == ms.float32
        np.testing.assert_array_equal(data[p.name].asnumpy(), p.asnumpy(), err_msg=p.name)
    resumed = ddpm_ms.Trainer.from_config(load_config(TINY_YAML, [
        f"train.out_dir={tmp_path}", "train.amp=O0", "train.max_steps=4", "train.gif=false", "train.sample_num=2",
        "train.jit=false"]),
        resume="latest")                                                            # on another precision
    assert resumed.fit(progress=False)["step"] == 4


@pytest.mark.parametrize("what", ["TrainStep", "Denoiser"])
def test_fast_cpu_settings_without_use_device(what):
    """A notebook that never calls use_device: building a TrainStep or a Denoiser applies the CPU settings;
    importing ddpm_ms alone does not."""
    code = ("import os, ddpm_ms\nassert 'MS_DEV_HOST_BLOCKING_RUN' not in os.environ\n"
            "net = ddpm_ms.Unet(dim=8, dim_mults=(1, 2), channels=1)\n"
            "sched = ddpm_ms.NoiseSchedule.from_name('linear', 10)\n"
            "assert 'MS_DEV_HOST_BLOCKING_RUN' not in os.environ\n" +
            ("from mindspore import nn, amp\nddpm_ms.TrainStep(net, sched, nn.Adam(net.trainable_params()), "
             "amp.DynamicLossScaler(1024, 2, 100))\n" if what == "TrainStep" else "ddpm_ms.Denoiser(net, sched)\n") +
            "assert os.environ['MS_DEV_HOST_BLOCKING_RUN'] == '1'\nprint('ok')")
    env = {k: v for k, v in os.environ.items() if k != "MS_DEV_HOST_BLOCKING_RUN"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    assert "warning: ddpm_ms" not in proc.stderr, proc.stderr[-2000:]


def test_one_warning_when_the_fast_settings_come_too_late():
    """A notebook that ran a MindSpore op first: MS_DEV_HOST_BLOCKING_RUN no longer takes effect in this process;
    building a Denoiser says so in one line (how to fix it included), and a TrainStep after it says nothing more."""
    code = ("import numpy as np, mindspore as ms, ddpm_ms\nfrom mindspore import nn, amp\n"
            "(ms.Tensor(np.ones(3, np.float32)) + 1).asnumpy()\n"
            "net = ddpm_ms.Unet(dim=8, dim_mults=(1, 2), channels=1)\n"
            "sched = ddpm_ms.NoiseSchedule.from_name('linear', 10)\n"
            "ddpm_ms.Denoiser(net, sched)\n"
            "ddpm_ms.TrainStep(net, sched, nn.Adam(net.trainable_params()), amp.DynamicLossScaler(1024, 2, 100))\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "MS_DEV_HOST_BLOCKING_RUN"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("warning: ddpm_ms")]
    assert len(lines) == 1 and "MS_DEV_HOST_BLOCKING_RUN=1" in lines[0] and "use_device()" in lines[0], proc.stderr
