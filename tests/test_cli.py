"""The two scripts end to end, and every bad input giving a one-line error with exit status 2."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli_batch import assert_one_line_error as _one_line_error, run_batch
from conftest import ROOT, TINY_YAML as TINY, assert_figure


def _run(script, *args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args],
                          capture_output=True, text=True, env=full_env, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not os.path.isdir(os.environ.get("DDPM_MS_DATA_DIR", "")):
        pytest.skip("needs DDPM_MS_DATA_DIR")
    out = tmp_path_factory.mktemp("run")
    proc = _run("train.py", "--config", TINY, "--no-progress", "--set", f"train.out_dir={out}",
                "--set", "train.max_steps=3", "--set", "train.sample_num=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "metrics.jsonl", "loss_curve.png", "samples_final.png", "denoising.gif",
                 "ckpt_step00000003.ckpt"):
        assert os.path.isfile(out / name), name
    return out


@pytest.fixture(scope="module")
def errors(trained, tmp_path_factory):
    """ERRORS (command lines that must each give a one-line error), run in one process: {id: result}.
    ``{ckpt}`` is the trained run's checkpoint, ``{tmp}`` a fresh folder."""
    tmp = tmp_path_factory.mktemp("errors")
    good = (trained / "ckpt_step00000003.ckpt").read_bytes()
    (tmp / "bad.ckpt").write_bytes(os.urandom(3000))
    (tmp / "half.ckpt").write_bytes(good[: len(good) // 2])
    (tmp / "taken").write_text("x")
    (tmp / "mismatch").mkdir()                          # an empty out_dir that a refused run must leave empty
    fill = {"{ckpt}": str(trained / "ckpt_step00000003.ckpt"), "{tmp}": str(tmp)}
    argvs = [[command, *[_fill(a, fill) for a in args]] for command, args in ERRORS.values()]
    results = dict(zip(ERRORS, run_batch(argvs, tmp)))
    results["tmp"] = tmp
    return results


def _fill(text, fill):
    for key, value in fill.items():
        text = text.replace(key, value)
    return text


ERRORS = {   # id -> (command, args)
    "missing checkpoint": ("sample", ["--ckpt", "{tmp}/nope.ckpt"]),
    "corrupt checkpoint": ("sample", ["--ckpt", "{tmp}/bad.ckpt"]),
    "truncated checkpoint": ("sample", ["--ckpt", "{tmp}/half.ckpt"]),
    **{f"{script} {name}": (script, ["--ckpt", "{ckpt}", *args]) for script in ("sample", "evaluate")
       for name, args in (("steps above T", ["--sampler", "ddim", "--steps", "1000"]),
                          ("eta above 1", ["--sampler", "ddim", "--eta", "5"]),
                          ("eta for ddpm", ["--eta", "0"]),
                          ("eta for dpm++2m", ["--sampler", "dpm++2m", "--eta", "0.5"]))},
    "another architecture": ("train", ["--config", TINY, "--no-progress", "--set", "train.out_dir={tmp}/arch",
                                       "--set", "model.dim=12", "--resume", "{ckpt}"]),
    "unknown key": ("train", ["--config", TINY, "--set", "train.batchsize=4"]),
    "negative batch": ("train", ["--config", TINY, "--set", "train.batch_size=-4"]),
    "no config": ("train", ["--config", "{tmp}/none.yaml"]),
    "negative num": ("sample", ["--ckpt", "x.ckpt", "--num", "-3"]),
    "batch not a number": ("sample", ["--ckpt", "x.ckpt", "--batch-size", "many"]),
    "eta for ddpm sampler": ("sample", ["--ckpt", "{ckpt}", "--sampler", "ddpm", "--eta", "1"]),
    "class of an unconditional model": ("sample", ["--ckpt", "{ckpt}", "--class", "Bag"]),
    "out a file": ("sample", ["--ckpt", "{ckpt}", "--out", "{tmp}/taken"]),
    "out under a file": ("sample", ["--ckpt", "{ckpt}", "--out", "{tmp}/taken/sub"]),
    "out_dir a file": ("train", ["--config", TINY, "--set", "train.out_dir={tmp}/taken"]),
    "dataset and model disagree": ("train", ["--config", TINY, "--set", "train.out_dir={tmp}/mismatch",
                                             "--set", "model.channels=3"]),
}


def test_sample_script_writes_grid_npy_gif(trained, tmp_path):
    proc = _run("sample.py", "--ckpt", str(trained / "ckpt_step00000003.ckpt"), "--num", "5", "--batch-size", "3",
                "--out", str(tmp_path), "--gif", "--forward-figure", "--ablation", "--explain", "--seed", "1",
                "--sampler", "dpm++2m", "--steps", "6", "--spacing", "logsnr")
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (5, 1, 28, 28) and samples.dtype == np.float32 and np.isfinite(samples).all()
    for name in ("samples.png", "denoising.gif", "forward_diffusion.png", "ablation.png", "explain_steps.png",
                 "explain_std.png", "explain_loss.png"):
        assert os.path.getsize(tmp_path / name) > 0


def test_missing_checkpoint(errors):
    _one_line_error(errors["missing checkpoint"], "checkpoint not found")


def test_corrupt_checkpoint(errors):
    _one_line_error(errors["corrupt checkpoint"], "corrupt or unreadable checkpoint",
                    str(errors["tmp"] / "bad.ckpt"))


def test_truncated_checkpoint(errors):
    _one_line_error(errors["truncated checkpoint"], str(errors["tmp"] / "half.ckpt"))


def test_sampler_flags_are_checked_the_same_everywhere(errors):
    for script in ("sample", "evaluate"):
        _one_line_error(errors[f"{script} steps above T"],
                        "--steps 1000 exceeds the checkpoint's 10 diffusion timesteps")
        _one_line_error(errors[f"{script} eta above 1"], "[0, 1]")
        _one_line_error(errors[f"{script} eta for ddpm"], "--eta applies to --sampler ddim, not ddpm")
        _one_line_error(errors[f"{script} eta for dpm++2m"], "--eta applies to --sampler ddim, not dpm++2m")


def test_second_run_into_a_used_folder(trained, tmp_path):
    """A fresh run refuses a folder holding another run; --overwrite starts over there with its own files only."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    args = ("train.py", "--config", TINY, "--no-progress", "--set", f"train.out_dir={run}", "--set",
            "train.max_steps=2", "--set", "train.ckpt_every=1", "--set", "train.keep_last=1", "--set", "train.gif=false")
    _one_line_error(_run(*args), "already holds a run", "--resume latest", "--overwrite")
    assert os.path.isfile(run / "ckpt_step00000003.ckpt")              # nothing of the old run was touched
    proc = _run(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(f for f in os.listdir(run) if f.endswith(".ckpt")) == ["ckpt_step00000002.ckpt"]
    with open(run / "metrics.jsonl", encoding="utf-8") as f:
        assert [json.loads(line)["step"] for line in f] == [2]        # a new log, not appended to the old one
    assert not os.path.exists(run / "denoising.gif")                   # no file of the old run is left to mix in
    _one_line_error(_run(*args, "--overwrite", "--resume", "latest"), "exclude each other")


def test_checkpoint_of_another_architecture(errors):
    _one_line_error(errors["another architecture"], "does not match this architecture", "init_conv.weight",
                    "(8, 1, 7, 7)")


def test_unknown_config_key_and_bad_value(errors):
    _one_line_error(errors["unknown key"], "unknown config key 'train.batchsize'")
    _one_line_error(errors["negative batch"], "train.batch_size")
    _one_line_error(errors["no config"], "config file not found")


def test_bad_cli_values(errors):
    _one_line_error(errors["negative num"], "--num", "positive integer")
    _one_line_error(errors["batch not a number"], "--batch-size")


def test_missing_dataset(tmp_path):
    env = {"DDPM_MS_DATA_DIR": str(tmp_path / "no-data"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "DDPM_MS_OFFLINE": "1"}
    _one_line_error(_run("train.py", "--config", TINY, "--set", f"train.out_dir={tmp_path}/o", env=env),
                    "Fashion-MNIST not found", "train-images-idx3-ubyte")


def test_corrupt_dataset(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    (root / "train-images-idx3-ubyte").write_bytes(np.array([2051, 10, 28, 28], ">u4").tobytes() + b"\0" * 100)
    (root / "train-labels-idx1-ubyte").write_bytes(np.array([2049, 10], ">u4").tobytes() + b"\0" * 10)
    _one_line_error(_run("train.py", "--config", TINY, "--set", f"data.root={root}",
                         "--set", f"train.out_dir={tmp_path}/o"), "corrupt Fashion-MNIST file", "truncated")


def test_ddim_sampler_and_no_ema(trained, tmp_path):
    ckpt = str(trained / "ckpt_step00000003.ckpt")
    a = _run("sample.py", "--ckpt", ckpt, "--num", "4", "--sampler", "ddim", "--steps", "5", "--out", str(tmp_path / "a"))
    assert a.returncode == 0, a.stderr[-2000:]
    b = _run("sample.py", "--ckpt", ckpt, "--num", "4", "--sampler", "ddim", "--steps", "5", "--no-ema",
             "--out", str(tmp_path / "b"))
    assert b.returncode == 0, b.stderr[-2000:]
    ema, raw = np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy")
    assert ema.shape == raw.shape == (4, 1, 28, 28)
    assert np.abs(ema - raw).max() > 1e-4        # EMA weights differ from the raw ones after 3 steps


def test_sampling_flags_that_do_not_fit_the_model(errors):
    _one_line_error(errors["eta for ddpm sampler"], "--eta applies to")
    _one_line_error(errors["class of an unconditional model"], "class-conditional")


def test_conditional_training_and_class_sampling(tmp_path):
    """A class-conditional v-prediction model: trained, resumed, sampled with guidance; sample.py takes the
    objective from the checkpoint."""
    if not os.path.isdir(os.environ.get("DDPM_MS_DATA_DIR", "")):
        pytest.skip("needs DDPM_MS_DATA_DIR")
    out = tmp_path / "cond"
    cond = ["--config", TINY, "--no-progress", "--set", f"train.out_dir={out}", "--set", "train.sample_num=4",
            "--set", "model.num_classes=10", "--set", "train.gif=false", "--set", "diffusion.objective=v"]
    proc = _run("train.py", *cond, "--set", "train.max_steps=9")     # a guided epoch-end grid after step 8
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = str(out / "ckpt_step00000009.ckpt")
    resumed = _run("train.py", *cond, "--set", "train.max_steps=10", "--resume", ckpt)   # same parameter names
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = _run("sample.py", "--ckpt", ckpt, "--num", "3", "--class", "ankle boot", "--guidance", "2",
               "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    assert np.load(tmp_path / "one" / "samples.npy").shape == (3, 1, 28, 28)
    grid = _run("sample.py", "--ckpt", ckpt, "--num", "20", "--per-class", "--out", str(tmp_path / "grid"))
    assert grid.returncode == 0, grid.stderr[-2000:]
    assert np.load(tmp_path / "grid" / "samples.npy").shape == (20, 1, 28, 28)
    _one_line_error(_run("sample.py", "--ckpt", ckpt, "--class", "Hat"), "--class 'Hat'", "Ankle boot")


def test_output_paths_get_one_line_errors(errors):
    _one_line_error(errors["out a file"], "--out", "is an existing file")
    _one_line_error(errors["out under a file"], "--out", "cannot be created")
    _one_line_error(errors["out_dir a file"], "train.out_dir", "is an existing file")
    assert (errors["tmp"] / "taken").read_text() == "x"


def test_dataset_model_mismatch_stops_before_training(errors):
    _one_line_error(errors["dataset and model disagree"], "model.channels=3", "data.dataset")
    assert os.listdir(errors["tmp"] / "mismatch") == []


def test_divergence_stops_and_keeps_the_last_good_checkpoint(trained, tmp_path):
    """Resumed at step 3 with an absurd LR: step 4 is finite and blows the weights up, steps 5.. have inf/nan grads.

    The checkpoint due at step 5 is never written (its step is not finite), and the run stops after 3 such steps.
    """
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    proc = _run("train.py", "--config", TINY, "--no-progress", "--resume", "latest", "--set", f"train.out_dir={run}",
                "--set", "train.lr=1e20", "--set", "train.max_nonfinite_steps=3", "--set", "train.ckpt_every=5",
                "--set", "train.log_every=1")
    _one_line_error(proc, "training diverged", "3 steps in a row, steps 5..7", "train.max_nonfinite_steps",
                    f"last good checkpoint: {run / 'ckpt_step00000003.ckpt'}")
    with open(run / "metrics.jsonl", encoding="utf-8") as f:
        losses = {row["step"]: row["loss"] for row in map(json.loads, f)}
    assert np.isfinite(losses[4]) and not np.isfinite([losses[5], losses[6], losses[7]]).any()
    assert sorted(f for f in os.listdir(run) if f.endswith(".ckpt")) == ["ckpt_step00000003.ckpt"]
    from ddpm_ms.build import load_model
    load_model(str(run / "ckpt_step00000003.ckpt"))                    # still readable


def test_inpaint_sdedit_and_interpolation_commands(trained, tmp_path):
    """ddpm-ms inpaint on real images by index, and sample --init-image / --interpolate, end to end."""
    ckpt_path = str(trained / "ckpt_step00000003.ckpt")
    for method, extra in (("plain", ["--sampler", "ddim", "--steps", "5"]), ("repaint", ["--jump-length", "2",
                                                                                          "--jump-n-sample", "2"])):
        out = tmp_path / method
        proc = subprocess.run([sys.executable, "-m", "ddpm_ms", "inpaint", "--ckpt", ckpt_path, "--image",
                               "data:5000:5004", "--mask", "left", "--method", method, "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        done = np.load(out / "inpainted.npy")
        from ddpm_ms.data import load_fashion_arrays
        real = load_fashion_arrays(os.environ["DDPM_MS_DATA_DIR"], count=5004)[0][5000:, None] / 127.5 - 1.0
        np.testing.assert_allclose(done[..., :14], real[..., :14], atol=1e-6)      # the left half is kept
        assert done.shape == (4, 1, 28, 28) and np.abs(done[..., 14:] - real[..., 14:]).max() > 0.1
        assert_figure(out / "inpaint_figure.png")
    proc = _run("sample.py", "--ckpt", ckpt_path, "--init-image", "data:5000:5003", "--strength", "0.3",
                "--sampler", "ddim", "--steps", "5", "--out", str(tmp_path / "sdedit"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(tmp_path / "sdedit" / "samples.npy").shape == (3, 1, 28, 28)
    assert_figure(tmp_path / "sdedit" / "sdedit_strengths.png")
    proc = _run("sample.py", "--ckpt", ckpt_path, "--interpolate", "5", "--sampler", "ddim", "--steps", "4",
                "--out", str(tmp_path / "interp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_figure(tmp_path / "interp" / "interpolation.png")
