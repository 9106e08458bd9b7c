"""Every error a user can cause is one line and exit status 2, for every command: a table of bad inputs."""
import os
import subprocess
import sys

import numpy as np
import pytest

from cli_batch import assert_one_line_error, run_batch
from conftest import ROOT, TINY_YAML


def _run(command, *args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-c", "import sys; from ddpm_ms.commands import main; "
                           "sys.exit(main(sys.argv[1:]))", command, *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=600, cwd=cwd or ROOT)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files of several kinds."""
    d = tmp_path_factory.mktemp("bad")
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "wrong_shape.npy", np.zeros((3, 2), np.float32))
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "bad.yaml").write_text("model: [unclosed\n")
    (d / "section.yaml").write_text("train: 3\n")
    (d / "a_folder").mkdir()
    (d / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    return d


CASES = [   # (id, command, args (with {d} for the bad-files folder), needles)
    ("config is a folder", "train", ["--config", "{d}/a_folder"], ["is a folder"]),
    ("config missing", "train", ["--config", "{d}/nope.yaml"], ["config file not found"]),
    ("config not yaml", "train", ["--config", "{d}/bad.yaml"], ["not valid YAML"]),
    ("config a list", "train", ["--config", "{d}/list.yaml"], ["mapping of sections"]),
    ("section not a mapping", "train", ["--config", "{d}/section.yaml"], ["'train' must be a mapping"]),
    ("unknown key", "train", ["--config", TINY_YAML, "--set", "train.lrr=1"], ["train.lrr"]),
    ("bad --set form", "train", ["--config", TINY_YAML, "--set", "train.lr"], ["section.key=value"]),
    ("bad --set type", "train", ["--config", TINY_YAML, "--set", "train.batch_size=big"], ["train.batch_size"]),
    ("classes without a time embedding", "train",
     ["--config", TINY_YAML, "--set", "model.with_time_emb=false", "--set", "model.num_classes=10"],
     ["model.num_classes", "with_time_emb"]),
    ("resume and overwrite", "train", ["--config", TINY_YAML, "--resume", "latest", "--overwrite"], ["exclude"]),
    ("bad device", "train", ["--config", TINY_YAML, "--device", "TPU"], ["--device"]),
    ("minutes zero", "train", ["--config", TINY_YAML, "--minutes", "0"], ["--minutes"]),
    ("budget too short for its warm-up", "train",
     ["--config", TINY_YAML, "--set", "train.minutes=5", "--set", "train.max_steps=10"], ["train.max_steps",
                                                                                         "warmup_steps"]),
    ("plan after most of the budget", "train", ["--config", TINY_YAML, "--set", "train.measure_share=0.9"],
     ["train.measure_share", "0.5"]),
    ("cosine starting before the warm-up ends", "train",
     ["--config", TINY_YAML, "--set", "train.minutes=5", "--set", "train.max_steps=500", "--set",
      "train.decay_start=10"], ["train.decay_start", "warmup_steps"]),
    ("re-plans out of order", "train",
     ["--config", TINY_YAML, "--set", "train.minutes=5", "--set", "train.max_steps=500", "--set",
      "train.decay_start=300", "--set", "train.earlier_plans=[[400,250,600],[300,250,600]]"], ["train.earlier_plans"]),
    ("re-plans not a table", "train", ["--config", TINY_YAML, "--set", "train.earlier_plans=5"],
     ["train.earlier_plans", "list of lists"]),
    ("a re-plan row not a list", "train", ["--config", TINY_YAML, "--set", "train.earlier_plans=[5]"],
     ["train.earlier_plans", "list of lists"]),
    ("guidance interval upside down", "train", ["--config", TINY_YAML, "--set", "train.guidance_interval=[8,2]"],
     ["train.guidance_interval"]),
    ("best margin a whole FD", "train", ["--config", TINY_YAML, "--set", "train.best_margin=2"],
     ["train.best_margin"]),
    ("unknown spacing", "train", ["--config", TINY_YAML, "--set", "train.sample_spacing=log"],
     ["train.sample_spacing", "logsnr"]),
    ("checkpoint missing", "sample", ["--ckpt", "{d}/none.ckpt"], ["checkpoint not found"]),
    ("checkpoint is a folder", "sample", ["--ckpt", "{d}/a_folder"], ["checkpoint not found"]),
    ("checkpoint garbage", "sample", ["--ckpt", "{d}/garbage.ckpt"], ["corrupt or unreadable checkpoint"]),
    ("steps zero", "sample", ["--ckpt", "x.ckpt", "--steps", "0"], ["--steps"]),
    ("num negative", "sample", ["--ckpt", "x.ckpt", "--num", "-3"], ["--num"]),
    ("eta above one", "sample", ["--ckpt", "x.ckpt", "--sampler", "ddim", "--eta", "2"], ["--eta"]),
    ("eta for ddpm", "sample", ["--ckpt", "x.ckpt", "--eta", "0.5"], ["--eta applies to"]),
    ("unknown sampler", "evaluate", ["--ckpt", "x.ckpt", "--sampler", "plms"], ["--sampler"]),
    ("samples of objects", "evaluate", ["--samples", "{d}/objects.npy"], ["not a numeric .npy"]),
    ("samples missing", "evaluate", ["--samples", "{d}/nope.npy"], ["not found"]),
    ("samples wrong shape", "evaluate", ["--samples", "{d}/wrong_shape.npy"], []),
    ("export suffix", "export", ["--ckpt", "x.ckpt", "--out", "net.onnx"], [".mindir"]),
    ("compare bad run", "compare-samplers", ["--ckpt", "{d}/garbage.ckpt"], ["corrupt or unreadable checkpoint"]),
    ("unknown command", "paint", [], ["unknown command"]),
    ("strength above one", "sample", ["--ckpt", "x.ckpt", "--init-image", "a.npy", "--strength", "1.5"],
     ["--strength"]),
    ("interpolate one", "sample", ["--ckpt", "x.ckpt", "--interpolate", "1", "--sampler", "ddim"], ["K >= 2"]),
    ("interpolate stochastic", "sample", ["--ckpt", "x.ckpt", "--interpolate", "4"], ["deterministic sampler"]),
    ("repaint off ddpm", "inpaint", ["--ckpt", "x.ckpt", "--image", "a.npy", "--mask", "left", "--method",
                                      "repaint", "--sampler", "ddim"], ["--sampler ddpm"]),
]

CKPT_CASES = [   # the same, past loading a checkpoint ({ckpt}: the tiny run's)
    ("image missing", "inpaint", ["--image", "{d}/nope.npy", "--mask", "left"], ["--image file not found"]),
    ("image wrong size", "inpaint", ["--image", "{d}/wrong_shape.npy", "--mask", "left"], ["[N, 1, 28, 28]"]),
    ("image of objects", "inpaint", ["--image", "{d}/objects.npy", "--mask", "left"], ["not a numeric .npy"]),
    ("bad data range", "inpaint", ["--image", "data:9:3", "--mask", "left"], ["START < STOP"]),
    ("unknown mask", "inpaint", ["--image", "data:0:2", "--mask", "diagonal"], ["neither a mask name"]),
    ("mask wrong size", "inpaint", ["--image", "data:0:2", "--mask", "{d}/wrong_shape.npy"], ["28x28"]),
    ("class of an unconditional model", "inpaint", ["--image", "data:0:2", "--mask", "left", "--class", "3"],
     ["--class"]),
    ("init image missing", "sample", ["--init-image", "{d}/nope.npy"], ["not found"]),
    ("steps above T", "sample", ["--steps", "500"], ["exceeds"]),
    ("guidance interval past T", "sample", ["--guidance-interval", "5", "500"], ["--guidance-interval", "timesteps"]),
]


@pytest.fixture(scope="module")
def results(files, tiny_run, tmp_path_factory):
    """Every case of CASES and CKPT_CASES run through the command line (one process for all): {id: result}."""
    out = tmp_path_factory.mktemp("out")
    argvs = [[command, *[a.replace("{d}", str(files)) for a in args]] for _, command, args, _ in CASES]
    argvs += [[command, "--ckpt", tiny_run["checkpoint"], "--out", str(out),
               *[a.replace("{d}", str(files)) for a in args]] for _, command, args, _ in CKPT_CASES]
    return dict(zip([c[0] for c in CASES + CKPT_CASES], run_batch(argvs, out)))


@pytest.mark.parametrize("case,needles", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(results, case, needles):
    assert_one_line_error(results[case], *needles)


@pytest.mark.parametrize("case,needles", [(c[0], c[3]) for c in CKPT_CASES], ids=[c[0] for c in CKPT_CASES])
def test_bad_input_past_the_checkpoint_is_one_line(results, case, needles):
    assert_one_line_error(results[case], *needles)


def test_a_user_error_in_a_process_of_its_own(files):
    """The same as a process of its own: exit status 2 and the one line on the real stderr."""
    assert_one_line_error(_run("sample", "--ckpt", str(files / "garbage.ckpt")), "corrupt or unreadable checkpoint")


def test_forced_kernels_without_a_compiler_is_one_line(tmp_path, data_dir):
    """DDPM_MS_KERNELS=onednn on a machine with no C++ compiler: one line saying so, not a traceback."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python")
    proc = _run("train", "--config", TINY_YAML, "--set", f"train.out_dir={tmp_path / 'run'}",
                env={"DDPM_MS_KERNELS": "onednn", "PATH": str(bindir), "CXX": "", "DDPM_MS_KERNEL_CACHE":
                     str(tmp_path / "cache")})
    assert_one_line_error(proc, "DDPM_MS_KERNELS=onednn", "no C++ compiler")


def test_the_one_line_check_can_fail(tmp_path):
    ok, = run_batch([["train", "--help"]], tmp_path)
    assert ok.returncode == 0
    with pytest.raises(AssertionError):
        assert_one_line_error(ok)
