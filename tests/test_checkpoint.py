"""Checkpoints that prove their integrity: a flipped byte anywhere is one line naming the file, and
--resume latest falls back to the newest checkpoint that passes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ddpm_ms import checkpoint as ckpt

from cli_batch import assert_one_line_error
from conftest import ROOT, TINY_YAML


def _flip(path, where):
    data = bytearray(open(path, "rb").read())
    data[int(len(data) * where)] ^= 0x10
    open(path, "wb").write(bytes(data))


def test_a_flipped_byte_is_an_error_naming_the_file(tiny_run, tmp_path):
    """A byte flipped early (weights), in the middle, or near the end (EMA, config): one error naming the file."""
    for where in (0.3, 0.6, 0.95):
        path = tmp_path / f"flipped{where}.ckpt"
        path.write_bytes(open(tiny_run["checkpoint"], "rb").read())
        ckpt.read_checkpoint(str(path))                          # intact: reads
        _flip(path, where)
        with pytest.raises(ckpt.CheckpointError, match=f"corrupt or unreadable checkpoint {path}"):
            ckpt.read_checkpoint(str(path))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sample.py"), "--ckpt", str(path),
                           "--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, str(path), "integrity")


def test_an_old_checkpoint_without_a_checksum_still_loads(tiny_run, tmp_path):
    import mindspore as ms
    data = ckpt.read_checkpoint(tiny_run["checkpoint"])
    plain = tmp_path / "old.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in data.items() if k != "config"], str(plain),
                       append_dict={"config": data["config"]})        # no crc_check, as ddpm_ms wrote before
    again = ckpt.read_checkpoint(str(plain))
    assert ckpt.checkpoint_position(again) == ckpt.checkpoint_position(data)


def test_resume_latest_falls_back_to_the_newest_intact_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    train = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", TINY_YAML, "--no-progress",
             "--set", f"train.out_dir={out}", "--set", "train.gif=false", "--set", "train.sample_num=2",
             "--set", "train.keep_last=3"]
    proc = subprocess.run(train + ["--set", "train.max_steps=12"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(str(out))] == [4, 8, 12]
    _flip(out / ckpt.checkpoint_name(12), 0.5)
    proc = subprocess.run(train + ["--set", "train.max_steps=14", "--resume", "latest"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning: skipping")]
    assert len(warnings) == 1 and ckpt.checkpoint_name(12) in warnings[0], proc.stderr[-2000:]
    assert "resumed from" in proc.stdout and ckpt.checkpoint_name(8) in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 14
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(str(out / ckpt.checkpoint_name(12))))[0] == 12  # rewritten
    for name in (ckpt.checkpoint_name(4), ckpt.checkpoint_name(8), ckpt.checkpoint_name(12)):
        if (out / name).exists():
            _flip(out / name, 0.5)
    for name in os.listdir(out):
        if name.startswith("ckpt_step") and name != ckpt.checkpoint_name(14):
            os.remove(out / name)
    _flip(out / ckpt.checkpoint_name(14), 0.5)
    proc = subprocess.run(train + ["--set", "train.max_steps=16", "--resume", "latest"], capture_output=True,
                          text=True, timeout=600)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("[WARNING", "warning:"))]
    assert proc.returncode == 2 and len(lines) == 1 and "passes its integrity check" in lines[0], proc.stderr[-2000:]


def test_save_state_round_trips_a_training_state(tiny_run, tmp_path):
    from ddpm_ms.trainer import Trainer
    cfg = tiny_run["config"]
    tr = Trainer.from_config(cfg, resume=tiny_run["checkpoint"])
    path = ckpt.save_state(str(tmp_path / "copy.ckpt"), tr.state)
    a, b = ckpt.read_checkpoint(tiny_run["checkpoint"]), ckpt.read_checkpoint(path)
    assert sorted(a) == sorted(b) and len(a) > 100
    for k in a:
        if k != "config":
            np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)
    tr.folder.release()
