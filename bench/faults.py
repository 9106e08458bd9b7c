#!/usr/bin/env python
"""Fault injection, the long variant: SIGKILL at random moments and mid-write, and SIGKILL/SIGTERM/SIGINT in every
phase (evaluation, best.ckpt write, preview grid, final samples, resume), resuming each time; one table.

    python bench/faults.py --kills 25 --epochs 40     # its table goes into BENCHMARKS.md

The harness is tests/fault_harness.py (tests/test_faults.py runs it with fewer kills); its docstring says what
each part checks.
"""
import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import fault_harness as fh  # noqa: E402  pylint: disable=wrong-import-position


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=25, help="random and mid-write SIGKILLs")
    parser.add_argument("--epochs", type=int, default=40, help="length of the tiny run (8 steps each)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one fault in every phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/ddpm_ms_faults", help="scratch folder (emptied)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    ref, faulty, full = (os.path.join(args.work, n) for n in ("reference", "killed", "enospc"))
    start = time.time()
    fh.reference_run(ref, args.epochs)
    stats = fh.kill_and_resume(faulty, args.kills, seed=args.seed, epochs=args.epochs)
    diff, compared = fh.differences(ref, faulty)
    code, lines, left = fh.enospc_run(full)
    print("| kills (SIGKILL) | during a checkpoint write | launches | checkpoint reads verified | "
          "final tensors compared | not bit-identical | ENOSPC: exit, stderr lines, files left |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {stats['kills']} | {stats['during_write']} | {stats['launches']} | {stats['checkpoints_verified']} | "
          f"{compared - 1} | {len(diff)}{' ' + ', '.join(diff) if diff else ''} | {code}, {len(lines)}, "
          f"{' '.join(sorted(left))} |")
    print(f"\nENOSPC error: {lines[0] if lines else '(none)'}\n")

    eref, phased = os.path.join(args.work, "eval_reference"), os.path.join(args.work, "phases")
    fh.reference_run(eref, fh.EPOCHS, evaluate=True)
    phases = fh.PHASES * args.rounds
    pstats = fh.kill_in_phases(phased, phases)
    pdiff, pcompared = fh.differences(eref, phased)
    print("| phase | signals sent |\n|---|---|")
    for phase in fh.PHASES:
        sent = [s for p, s in pstats["sent"] if p == phase]
        print(f"| {phase} | {', '.join(sent)} |")
    print(f"\n{pstats['kills']} faults in {len(fh.PHASES)} phases, {pstats['launches']} launches, "
          f"{pstats['checkpoints_verified']} checkpoint reads verified, {pcompared - 1} final tensors and best.ckpt "
          f"and every metrics row compared: {len(pdiff)} differences{' (' + ', '.join(pdiff) + ')' if pdiff else ''}")
    print(f"{time.time() - start:.0f} s")
    return 0 if not diff and not pdiff and code == 2 and len(lines) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
