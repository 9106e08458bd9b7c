"""Many command lines through ``ddpm_ms.commands.main`` in one fresh process (MindSpore imported once, not once
per case), and the check that a result is one user-error line."""
import json
import subprocess
import sys
import types

from conftest import ROOT

# Runs each argv in turn: the exit status (main's return value, or SystemExit's code; 1 and the traceback for an
# escaped exception) and what the command wrote to stderr.
DRIVER = """
import contextlib, io, json, sys, traceback
from ddpm_ms.commands import main
out = []
for argv in json.load(open(sys.argv[1])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:   # pylint: disable=broad-except
            traceback.print_exc()
            code = 1
    out.append({"returncode": code, "stderr": err.getvalue()})
json.dump(out, open(sys.argv[2], "w"))
"""


def run_batch(argvs, folder):
    """Every argv of ``argvs`` (``[command, *args]``) run by one process, in order; a list of results with
    ``returncode`` and ``stderr``. ``folder`` holds the exchange files."""
    todo, done = folder / "argvs.json", folder / "results.json"
    todo.write_text(json.dumps(argvs))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(todo), str(done)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [types.SimpleNamespace(**r) for r in json.loads(done.read_text())]


def assert_one_line_error(proc, *needles):
    """Exit 2, no traceback, and stderr one 'error: ...' line naming each needle (MindSpore's own [WARNING]
    log lines aside)."""
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("[WARNING")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
