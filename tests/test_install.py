"""The wheel, installed outside the repository: the ddpm-ms command trains a bundled config by name."""
import glob
import json
import os
import subprocess
import sys
import sysconfig

from conftest import ROOT


def test_wheel_installs_and_trains_a_bundled_config(data_dir, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), ROOT], check=True, timeout=600, capture_output=True)
    wheel = glob.glob(str(tmp_path / "dist" / "ddpm_ms-*.whl"))[0]
    venv = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True,
                   timeout=300)
    py = venv / "bin" / "python"
    # the dependencies (mindspore, numpy, ...) come from this environment; ddpm_ms only from the wheel
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w", encoding="utf-8") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", wheel], check=True, timeout=300)
    away = tmp_path / "elsewhere"
    away.mkdir()
    where = subprocess.run([str(py), "-c", "import ddpm_ms; print(ddpm_ms.__file__)"], cwd=away, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert where.startswith(site), where                                  # not the repository's copy
    cli = str(venv / "bin" / "ddpm-ms")
    listed = subprocess.run([cli, "--help"], cwd=away, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and all(c in listed.stdout for c in ("train", "sample", "evaluate", "export"))
    proc = subprocess.run([cli, "train", "--config", "tiny.yaml", "--no-progress", "--set", "train.max_steps=2",
                           "--set", f"train.out_dir={away / 'run'}", "--set", "train.gif=false"],
                          cwd=away, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, DDPM_MS_DATA_DIR=data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(away / "run" / "ckpt_step00000002.ckpt")
    fashion = subprocess.run([str(py), "-c", "import json; from ddpm_ms.config import load_config; "
                              "print(json.dumps(load_config('fashion_cpu').to_dict()))"], cwd=away, capture_output=True,
                             text=True, check=True)
    from ddpm_ms.config import load_config   # the installed package's bundled config is the repository's file
    assert json.loads(fashion.stdout) == load_config(os.path.join(ROOT, "configs", "fashion_cpu.yaml")).to_dict()
