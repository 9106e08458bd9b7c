"""Faults in every phase (tests/fault_harness.py): SIGKILL, SIGTERM and SIGINT during an evaluation, a best.ckpt
write, a preview grid, the final samples and the resume itself; the resumed run ends bit-identical."""
import glob
import os

import fault_harness as faults


def test_a_fault_in_every_phase_changes_nothing(data_dir, tmp_path):
    """Each phase hit once, with SIGKILL, SIGTERM and SIGINT in turn; the evaluated run (FD and best.ckpt after
    every epoch) ends equal to the uninterrupted one: weights, EMA, Adam, loss scale, best.ckpt, every row."""
    ref, hit = str(tmp_path / "reference"), str(tmp_path / "phases")
    faults.reference_run(ref, evaluate=True)
    stats = faults.kill_in_phases(hit, hold=0.6)
    assert [p for p, _ in stats["sent"]] == list(faults.PHASES), stats
    assert {s for _, s in stats["sent"]} == {"SIGKILL", "SIGTERM", "SIGINT"}
    diff, compared = faults.differences(ref, hit)
    assert diff == [] and compared > 100, diff
    rows = faults.metrics_rows(hit)
    assert [r["step"] for r in rows if "fd" in r] == [8, 16, 24, 32, 40]      # FD rows neither lost nor doubled
    assert os.path.exists(os.path.join(hit, "best.ckpt")) and not glob.glob(os.path.join(hit, ".tmp-*"))
