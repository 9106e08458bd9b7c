"""Compare training recipes by FD at equal wall time: each run is a cold `scripts/train.py` process, timed here.

    python bench/recipes.py --out runs/recipes \
        --run "eps:fashion_cpu.yaml" \
        --run "v-minsnr:fashion_cpu.yaml:diffusion.objective=v,diffusion.loss_weighting=min_snr"

A run is NAME:CONFIG[:KEY=VALUE,...]. Every run needs train.eval_every > 0 (FD/KID of train.eval_num samples
with the recipe's sampler, logged to metrics.jsonl with the wall time). Prints a Markdown table, writes
recipes.json and fd_vs_wall.png (FD against wall time, one line per run) in --out. Needs DDPM_MS_DATA_DIR.
`--done NAME:FOLDER` adds a run already trained (its config.yaml and metrics.jsonl; wall time: its last row):

    python bench/recipes.py --out runs/curves --done 15min:runs/fashion_cpu --done hour:runs/fashion_cpu_hour
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ddpm_ms.config import load_config  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.viz import plt, read_metrics, save_log_plot  # noqa: E402  pylint: disable=wrong-import-position


def parse_run(text):
    """'name:config[:k=v,k=v]' -> (name, config, [overrides])."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise SystemExit(f"--run {text!r} must look like NAME:CONFIG[:KEY=VALUE,...]")
    return parts[0], parts[1], [o for o in (parts[2].split(",") if len(parts) == 3 else []) if o]


def train(name, config, overrides, out):
    """Run one cold training process; returns its wall seconds and its metrics rows."""
    folder = os.path.join(out, name)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", config, "--overwrite",
           "--no-progress", "--set", f"train.out_dir={folder}"] + [a for o in overrides for a in ("--set", o)]
    start = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.time() - start, read_metrics(os.path.join(folder, "metrics.jsonl"))


def describe(config, overrides, wall, rows):
    """One table row: the recipe's settings and its FD curve."""
    cfg = load_config(config, overrides)
    evals = [r for r in rows if "fd" in r]
    steps = max(r["step"] for r in rows)
    return {"objective": cfg.diffusion.objective, "weighting": cfg.diffusion.loss_weighting,
            "model": f"{cfg.model.block_type} dim {cfg.model.dim} x{list(cfg.model.dim_mults)}",
            "batch": cfg.train.batch_size, "lr": cfg.train.lr, "steps": steps, "wall_min": round(wall / 60, 2),
            "sampler": f"{cfg.train.sample_sampler}-{cfg.train.sample_steps}",
            "final_fd": round(evals[-1]["fd"], 1), "best_fd": round(min(r["fd"] for r in evals), 1),
            "eval_s": round(sum(r["eval_s"] for r in evals), 1),
            "curve": [(round(r["wall_s"] / 60, 2), round(r["fd"], 1)) for r in evals]}


def table(results):
    head = "| run | objective | weighting | model | batch | lr | steps | wall (min) | eval (s) | FD final | FD best |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        lines.append(f"| {name} | {r['objective']} | {r['weighting']} | {r['model']} | {r['batch']} | {r['lr']:g} | "
                     f"{r['steps']} | {r['wall_min']} | {r['eval_s']} | {r['final_fd']} | {r['best_fd']} |")
    return "\n".join(lines)


def plot(results, path):
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, r in results.items():
        ax.plot(*zip(*r["curve"]), "o-", ms=3, label=name)
    save_log_plot(fig, ax, path, "wall time (min, cold start)", "FD (1000 samples)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="NAME:CONFIG[:KEY=VALUE,...]")
    parser.add_argument("--done", action="append", default=[], help="NAME:FOLDER of a finished run")
    parser.add_argument("--out", default="runs/recipes")
    args = parser.parse_args()
    if not args.run and not args.done:
        parser.error("give at least one --run or --done")
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for text in args.done:
        name, _, folder = text.partition(":")
        rows = read_metrics(os.path.join(folder, "metrics.jsonl"))
        wall = max(r.get("wall_s", 0.0) for r in rows)
        results[name] = describe(os.path.join(folder, "config.yaml"), [], wall, rows)
    for text in args.run:
        name, config, overrides = parse_run(text)
        wall, rows = train(name, config, overrides, args.out)
        results[name] = describe(config, overrides, wall, rows)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    with open(os.path.join(args.out, "recipes.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(args.out, "fd_vs_wall.png"))
    print(table(results))


if __name__ == "__main__":
    main()
