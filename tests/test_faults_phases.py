"""Faults in every phase (tests/fault_harness.py): SIGKILL, SIGTERM and SIGINT in turn during a checkpoint write,
an evaluation, a best.ckpt write, a preview grid, the final samples and the resume itself; resumed each time, the
run ends bit-identical to an uninterrupted one."""
import glob
import os

import fault_harness as faults
from ddpm_ms import checkpoint as ckpt


def test_a_fault_in_every_phase_changes_nothing(data_dir, tmp_path):
    """Each phase hit once; every checkpoint on disk is read back in full after each fault; the evaluated run (FD
    and best.ckpt after every epoch) ends equal to the uninterrupted one: weights, EMA, Adam, loss scale,
    best.ckpt, every metrics row."""
    ref, hit = str(tmp_path / "reference"), str(tmp_path / "phases")
    faults.reference_run(ref, evaluate=True)
    stats = faults.kill_in_phases(hit, hold=0.6)
    assert [p for p, _ in stats["sent"]] == list(faults.PHASES), stats
    assert stats["sent"][0] == ("write", "SIGKILL") and {s for _, s in stats["sent"]} == {"SIGKILL", "SIGTERM",
                                                                                            "SIGINT"}
    assert stats["checkpoints_verified"] >= 8, stats
    diff, compared = faults.differences(ref, hit)
    assert diff == [] and compared > 100, diff
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(ckpt.list_checkpoints(hit)[-1]))[0] == 40
    rows = faults.metrics_rows(hit)
    assert [r["step"] for r in rows if "fd" in r] == [8, 16, 24, 32, 40]      # FD rows neither lost nor doubled
    assert os.path.exists(os.path.join(hit, "best.ckpt")) and not glob.glob(os.path.join(hit, ".tmp-*"))
    with open(os.path.join(hit, "metrics.jsonl"), "a", encoding="utf-8") as f:    # the comparison can fail
        f.write('{"step": 41, "loss": 1.0}\n')
    assert faults.differences(ref, hit)[0] == [f"metrics.jsonl rows ({len(rows)} vs {len(rows) + 1})"]
