"""`soma.serve.stop_worker` is bounded: a worker that ignores SIGTERM (Celery has been seen to hang in
its cold shutdown) is killed with its whole process group once the timeout passes (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from soma.serve import stop_worker

HANGS = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a shutdown that never ends
SLEEPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", SLEEPER])
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent counts as gone
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_that_ignores_sigterm_is_killed_with_its_children_after_the_timeout():
    proc = subprocess.Popen([sys.executable, "-c", HANGS], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    started = time.monotonic()
    stop_worker(proc, timeout_s=1.0)
    took = time.monotonic() - started
    assert proc.returncode is not None and took < 10, took
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the worker's pool child outlived it"
    stop_worker(proc, timeout_s=1.0)  # stopping a stopped worker is a no-op
