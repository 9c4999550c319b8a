"""The python tool's supervisor: runs the code, enforces the limits, and kills everything it started.

This file is not imported: `sandbox.py` runs its text with `python -I -S -c` in an empty
environment and a new session (and, where Linux allows it, in new user, PID, mount and
network namespaces, where it is PID 1). It reads its settings as JSON on stdin, starts the
code as its only child, and on exit, timeout or too much memory kills every descendant. On
Linux it is a child subreaper, so descendants that detach (double fork, `setsid`,
`setpgid`) are reparented to it and still found. It writes one JSON status line to stderr.
Each poll (every 20 ms) counts the descendants and sums their resident memory: too many
processes or too much memory together ends the run. A burst of forks that falls between two
polls and whose parent exits leaves its orphans with the supervisor; they are counted once more
after the code's exit.
Standard library only: `-S` leaves site-packages (and agentrt) out of `sys.path`.
"""

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.02


def children(pid):
    """The pids whose parent is `pid` (Linux /proc; [] elsewhere)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


def descendants(pid):
    """Every live descendant of `pid`, parents before children."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def rss_bytes(pids):
    """The summed resident memory of `pids` in bytes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * resource.getpagesize()
        except (OSError, ValueError, IndexError):
            pass
    return total


def processes_of_uid(uid):
    """How many processes of `uid` this /proc shows (the count RLIMIT_NPROC starts from)."""
    count = 0
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def limiter(cfg):
    """A preexec_fn setting the per-process limits of the sandboxed code."""
    nproc = processes_of_uid(os.getuid()) + cfg["max_processes"]

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if hasattr(resource, "RLIMIT_NPROC"):
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return apply


def kill_all(child):
    """SIGKILL every descendant (and the child's group) until none is left; reap them."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pids = descendants(os.getpid())
        if sys.platform != "linux":
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:  # reap the child and any orphan handed to us as subreaper
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child.pid:
                child.returncode = os.waitstatus_to_exitcode(wstatus)
        if not pids:
            return
        time.sleep(POLL_S)


def main():
    """Run the code from the JSON settings on stdin under the limits; report on stderr."""
    cfg = json.loads(sys.stdin.read())
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(
        [cfg["python"], "-I", "-u", "-c", cfg["code"]],
        cwd=cfg["cwd"],
        env=cfg["env"],
        stdin=subprocess.DEVNULL,
        stdout=1,
        stderr=subprocess.STDOUT,
        start_new_session=sys.platform != "linux",
        preexec_fn=limiter(cfg),
    )
    deadline = time.monotonic() + cfg["timeout_s"]
    status, peak = "exit", 0
    while child.poll() is None:
        if time.monotonic() > deadline:
            status = "timeout"
            break
        pids = descendants(os.getpid())
        if len(pids) > cfg["max_processes"]:
            status = "processes"
            break
        used = rss_bytes(pids) if cfg["total_memory"] else 0
        peak = max(peak, used)
        if used > cfg["memory_bytes"]:
            status = "memory"
            break
        time.sleep(POLL_S)
    if status == "exit" and len(descendants(os.getpid())) > cfg["max_processes"]:
        status = "processes"  # forked between two polls and exited: the orphans are ours now
    kill_all(child)
    report = {"status": status, "returncode": child.wait(), "peak_rss": peak}
    sys.stderr.write(json.dumps(report) + "\n")


if __name__ == "__main__":  # run as `python -c`; importing it does nothing
    main()
