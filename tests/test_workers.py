"""Worker processes: a SIGTERM from the parent ends a job through its ``finally``, but never inside an import."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from mergeflow.workers import _end_with_parent
    _end_with_parent(os.getppid())
    try:
        import slowmod  # a job's module, imported when its first job is unpickled
        import time
        time.sleep(30)  # the job
    finally:
        open(os.path.join(sys.argv[1], "cleaned"), "w").close()
""")

SLOW = textwrap.dedent("""
    import pathlib, time
    here = pathlib.Path(__file__).parent
    (here / "started").touch()
    time.sleep(1.5)
    (here / "imported").touch()
""")


def test_a_sigterm_during_an_import_waits_for_it_then_runs_the_jobs_cleanup(tmp_path):
    """The CI failure this guards against: the pool's SIGTERM raised SystemExit inside a worker's import of
    SciPy, whose unwinding recursed without end and printed a traceback on the user's Ctrl-C."""
    (tmp_path / "slowmod.py").write_text(SLOW)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err == ""
    assert (tmp_path / "imported").exists()  # the import finished before the exit was raised
    assert (tmp_path / "cleaned").exists()  # and the job's finally ran
