"""A checkpoint write that hits ENOSPC loses nothing and says one line (tests/fault_harness.py; the kills and
signals in every phase are tests/test_faults_phases.py)."""
import os

import fault_harness as faults
from ddpm_ms import checkpoint as ckpt


def test_full_disk_during_a_checkpoint_write(data_dir, tmp_path):
    out = str(tmp_path)
    code, lines, left = faults.enospc_run(out)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: could not write checkpoint") and "ckpt_step00000008.ckpt" in lines[0]
    assert "No space left on device" in lines[0]
    assert left == ["ckpt_step00000004.ckpt"]                     # the previous one survives, no partial file
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(os.path.join(out, left[0]))) == (4, 0, 4)
