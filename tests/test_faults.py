"""Fault injection (tests/fault_harness.py): SIGKILLs at random moments and mid-write, and SIGKILL, SIGTERM and
SIGINT in every phase (evaluation, best.ckpt write, preview grid, final samples, resume), resumed each time, end
bit-identical to an uninterrupted run; a checkpoint write that hits ENOSPC loses nothing and says one line."""
import glob
import os

import fault_harness as faults
from ddpm_ms import checkpoint as ckpt


def test_killed_and_resumed_run_is_bit_identical(data_dir, tmp_path):
    ref, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    faults.reference_run(ref)
    stats = faults.kill_and_resume(killed, kills=4, seed=1)
    assert stats["kills"] == 4 and stats["during_write"] >= 1, stats
    assert stats["checkpoints_verified"] >= 5, stats            # every checkpoint on disk read back after each kill
    diff, compared = faults.differences(ref, killed)
    assert diff == [] and compared > 100, diff                   # weights, Adam, EMA, loss scaler, metrics rows
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(ckpt.list_checkpoints(killed)[-1]))[0] == 40
    assert not glob.glob(os.path.join(killed, ".tmp-*"))
    with open(os.path.join(killed, "metrics.jsonl"), "a", encoding="utf-8") as f:    # the comparison can fail
        f.write('{"step": 41, "loss": 1.0}\n')
    assert faults.differences(ref, killed)[0] == ["metrics.jsonl rows (40 vs 41)"]


def test_full_disk_during_a_checkpoint_write(data_dir, tmp_path):
    out = str(tmp_path)
    code, lines, left = faults.enospc_run(out)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: could not write checkpoint") and "ckpt_step00000008.ckpt" in lines[0]
    assert "No space left on device" in lines[0]
    assert left == ["ckpt_step00000004.ckpt"]                     # the previous one survives, no partial file
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(os.path.join(out, left[0]))) == (4, 0, 4)
