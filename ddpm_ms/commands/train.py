"""Train a DDPM: python scripts/train.py --config configs/fashion.yaml [--set train.batch_size=32] [--resume latest]

    python scripts/train.py --config fashion_cpu.yaml --minutes 30    # a run sized to 30 minutes on this machine

--minutes M (train.minutes) counts the whole run from the process start: imports, data, compiles, evaluations,
grids, checkpoints and the final samples. The run measures its speed over train.warmup_steps steps (the LR warms
up meanwhile), fixes its step count, and writes that plan into config.yaml and every checkpoint: --resume
continues it, and train.max_steps replays it on another machine.

Data parallel on N devices: msrun --worker_num=N --local_worker_num=N --master_port=8118 --join=True
scripts/train.py --config ... (train.batch_size is per device).
"""
import json
import sys

from ..budget import process_start_time
from ..cli import ArgumentParser, add_device_arg, positive_float


def main(argv=None, prog=None):
    parser = ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config: a path, or a bundled name (fashion.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--resume", metavar="PATH|latest", help="continue from a checkpoint (exactly)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh run in a train.out_dir that holds another run (its checkpoints and "
                             "metrics are deleted)")
    parser.add_argument("--minutes", type=positive_float, metavar="M",
                        help="size the run to M minutes of wall time on this machine (train.minutes)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_device_arg(parser, default=None)
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")

    from ..config import load_config  # pylint: disable=import-outside-toplevel
    from ..device import use_device  # pylint: disable=import-outside-toplevel
    from ..distributed import setup  # pylint: disable=import-outside-toplevel
    from ..trainer import Trainer  # pylint: disable=import-outside-toplevel

    overrides = args.set + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides + ([f"train.minutes={args.minutes}"] if args.minutes else []))
    use_device(cfg.train.device)
    rank, world_size = setup()   # (0, 1) unless launched by msrun
    trainer = Trainer.from_config(cfg, resume=args.resume, rank=rank, world_size=world_size, overwrite=args.overwrite,
                                  start_time=process_start_time())
    summary = trainer.fit(progress=not args.no_progress)
    if summary["interrupted"] is not None:
        print(f"interrupted by signal {summary['interrupted']} at step {summary['step']}; "
              f"saved {summary['checkpoint']}; continue with --resume latest", file=sys.stderr)
    print(json.dumps(summary))
    return 0
