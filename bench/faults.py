#!/usr/bin/env python
"""Fault injection, the long variant: SIGKILL at random moments and mid-write, and SIGKILL/SIGTERM/SIGINT in every
phase (checkpoint write, evaluation, best.ckpt write, preview grid, final samples, resume), resuming each time;
one table.

    python bench/faults.py --kills 25 --epochs 40     # its table goes into BENCHMARKS.md

The harness is tests/fault_harness.py (tests/test_faults_phases.py runs one round of the phases); its docstring
says what each part checks.
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
    start, diff, code, lines = time.time(), [], 2, ["-"]
    if args.kills:
        fh.reference_run(ref, args.epochs)
        stats = fh.kill_and_resume(faulty, args.kills, seed=args.seed, epochs=args.epochs)
        diff, compared = fh.differences(ref, faulty)
        code, lines, left = fh.enospc_run(full)
        print("| kills (SIGKILL) | during a checkpoint write | launches | checkpoint reads verified | "
              "final tensors compared | not bit-identical | ENOSPC: exit, stderr lines, files left |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {stats['kills']} | {stats['during_write']} | {stats['launches']} | "
              f"{stats['checkpoints_verified']} | {compared - 1} | {len(diff)}{' ' + ', '.join(diff) if diff else ''} "
              f"| {code}, {len(lines)}, {' '.join(sorted(left))} |")
        print(f"\nENOSPC error: {lines[0] if lines else '(none)'}\n")

    # one fault in every phase per round, each round a run of its own (SIGKILL, SIGTERM, SIGINT in turn)
    eref = os.path.join(args.work, "eval_reference")
    fh.reference_run(eref, fh.EPOCHS, evaluate=True)
    print("| round | checkpoint write | eval | best.ckpt write | preview grid | final samples | resume | launches | "
          "checkpoint reads verified | tensors compared (final + best.ckpt) | metrics rows compared | differences |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    pdiff = []
    for r in range(args.rounds):
        phased = os.path.join(args.work, f"phases{r}")
        signals = fh.SIGNALS[r % 3:] + fh.SIGNALS[:r % 3]
        pstats = fh.kill_in_phases(phased, signals=signals)
        d, pcompared = fh.differences(eref, phased)
        pdiff += d
        sent = dict(pstats["sent"])
        print(f"| {r + 1} | " + " | ".join(sent[p] for p in fh.PHASES) + f" | {pstats['launches']} | "
              f"{pstats['checkpoints_verified']} | {2 * (pcompared - 1)} | {len(fh.metrics_rows(phased))} | "
              f"{len(d)}{' ' + ', '.join(d) if d else ''} |")
    print(f"{time.time() - start:.0f} s")
    return 0 if not diff and not pdiff and code == 2 and len(lines) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
