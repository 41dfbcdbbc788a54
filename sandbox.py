"""Running untrusted programs against tests: isolation, limits and verdicts (`run_tests`, `TestResult`).

Imports nothing of ours; rewards.py builds the tests and turns results into rewards.

- One child per test: `python -I -S -B -c BOOT --sandbox-child CFG` imports this file and runs `_child` (the
  code above the parent's imports, so the child loads only os, sys, resource and _signal) in a fresh temporary
  folder that is removed afterwards, with a clean environment, stdin = the test input, stdout/stderr to unlinked
  temporary files capped by RLIMIT_FSIZE, RLIMIT_CPU/AS/FSIZE/NOFILE/CORE(/NPROC) and a wall-time limit; the
  child is its own session and its process group is SIGKILLed always.
- As root the child drops to a per-sandbox uid (flock-reserved from 61000-62023, so concurrent sandboxes in any
  process never share one): NPROC is enforced, nothing outside its folder is writable, other processes cannot be
  signalled. Import paths stay reachable through /proc/self/fd handles opened before the drop.
- With unshare/nsenter (root): each child joins one long-lived empty network namespace (no network, not even
  loopback) and gets a fresh pid namespace whose init (the child) runs the program as its own child: when the
  program ends, every process it left behind (setsid grandchildren included) dies with the namespace.
- Always: an audit hook refuses sockets and Python-level writes outside the folder. Without a pid namespace it
  also refuses process creation; without uid switching it refuses kill() and ctypes symbol lookups.
- Function tests ({"functional": code}) pass only if the child prints a random marker after the test code
  returns (sys.exit(0), os._exit(0), atexit tricks or patched builtins before a failing assert earn nothing);
  stdin tests pass on exit 0 and equal stdout lines (trailing whitespace ignored; tokens with a '.' may differ by
  1e-6).
- A judged program may import the standard library and PACKAGES (what the LeetCode / LiveCodeBench judges offer
  that our data uses), installed with the runtime requirements.
- Any failure is a failed TestResult whose status is one of STATUSES, never an exception.

Run: pytest tests/test_sandbox.py ; python bench.py rewards --data ../shared/data
"""
from __future__ import annotations

import os
import sys

STATUSES = ("pass", "wrong answer", "runtime error", "timeout", "memory", "output limit", "sandbox error", "skipped")
_READY = b"\0sandbox ready\n"  # the child's first stderr bytes; missing: the sandbox itself failed
PACKAGES = ("sortedcontainers",)  # third-party modules a judged program may import (requirements.txt pins them)
_WRITE_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.truncate",
                 "os.symlink", "os.link", "os.utime", "shutil.rmtree")

# ----------------------------------------------------------------------------------------------- the child


def _child_confine(c: dict) -> None:
    """Limits, import paths and the uid drop; as pid 1 of a fresh pid namespace, fork and mirror the program."""
    import _signal as signal  # not `signal`: its enum import costs the child ~10 ms
    import resource
    for k, soft, hard in c["limits"]:
        resource.setrlimit(k, (soft, hard))
    paths = [p for p in sys.path[1:] + c["path"] if os.path.isdir(p)]  # [0] is this file's folder (BOOT)
    if c["uid"]:  # keep import paths reachable through fds opened while still root
        fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in paths]
        os.setgroups([])
        os.setgid(c["uid"])
        os.setuid(c["uid"])
        new = ["/proc/self/fd/%d" % f for f in fds]
        moved = lambda x: next((n + x[len(p):] for p, n in zip(paths, new) if x.startswith(p + "/")), x)
        for m in list(sys.modules.values()):  # packages imported at start-up (encodings, ...)
            if isinstance(getattr(m, "__path__", None), list):
                m.__path__[:] = [moved(x) for x in m.__path__]
        paths = new
    sys.path[:] = paths
    signal.signal(signal.SIGALRM, lambda *a: os._exit(137))
    signal.alarm(c["alarm"])
    if os.getpid() == 1:  # init of a fresh pid namespace: run the program as our child and mirror its end
        pid = os.fork()
        if pid:
            st = os.waitpid(pid, 0)[1]
            os._exit(128 + os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))


def _child_hook(block: list[str]) -> None:
    """The audit hook: no sockets, no writes outside the working folder, no events in `block`."""
    here, block, events = os.getcwd(), frozenset(block), frozenset(_WRITE_EVENTS)
    wr = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    real = os.path.realpath

    def inside(p) -> bool:
        p = real(os.fsdecode(p))
        return p == here or p.startswith(here + "/") or p == os.devnull

    def hook(ev, a):
        if ev in block or ev.startswith("socket."):
            raise PermissionError("sandbox refuses " + ev)
        if ev == "open" and isinstance(a[0], (str, bytes)) and a[2] & wr and not inside(a[0]):
            raise PermissionError("sandbox refuses writing " + os.fsdecode(a[0]))
        if ev in events and not all(inside(x) for x in a[:2] if isinstance(x, (str, bytes))):
            raise PermissionError("sandbox refuses " + ev)
    sys.addaudithook(hook)


def _child() -> None:
    """The sandboxed process (module docstring); never returns."""
    c = eval(sys.argv[2], {"__builtins__": {}})  # our own repr() of ints, strings, lists and dicts: no user data
    sys.argv[:] = ["main.py"]
    del sys.modules[__name__]  # `import sandbox` in the program finds nothing
    _child_confine(c)
    mark = os.read(0, 64) if c["fn"] else b""
    if c["fn"]:
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    out = os.dup(1)
    _child_hook(c["block"])
    os.write(2, _READY)
    builtins = sys.modules["builtins"]
    builtins.exit = builtins.quit = sys.exit  # normally added by site, which -S skips
    g = {"__name__": "__main__", "__file__": "main.py", "__builtins__": builtins}
    with open("main.py") as f:
        src = f.read()
    exec(compile(src, "main.py", "exec"), g)
    if c["fn"]:
        os.write(out, b"\n" + mark + b"\n")
    sys.exit(0)


if sys.argv[0] == "-c" and sys.argv[1:2] == ["--sandbox-child"]:
    _child()

# ----------------------------------------------------------------------------------------------- the parent
# (imported below the child's code so that the child never pays for these modules)
import atexit  # noqa: E402
import contextlib  # noqa: E402
import fcntl  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_BOOT = f"import sys; sys.path.insert(0, {_HERE!r}); import sandbox"
_SPAWN_EVENTS = ["os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "subprocess.Popen"]
_KILL_EVENTS = ["os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlsym"]
_SITE = [p for p in sys.path if p and os.path.isdir(p) and ("site-packages" in p or "dist-packages" in p)]
_UID_BASE, _UID_COUNT = 61000, 1024
_LIVE: set[tuple[int, str]] = set()  # (process group, dir) of running children
_JAIL: dict = {}
_JAIL_LOCK = threading.Lock()


@dataclass
class TestResult:
    __test__ = False  # not a pytest class
    passed: bool
    status: str  # one of STATUSES
    time_s: float = 0.0
    detail: str = ""  # why, or the tail of stderr


def _jail() -> dict:
    """How children are confined on this machine, decided once per process: root (uid switching) and a
    command prefix that enters a shared empty network namespace and a fresh pid namespace (when permitted)."""
    with _JAIL_LOCK:
        if _JAIL.get("pid") == os.getpid() and (_JAIL["keeper"] is None or _JAIL["keeper"].poll() is None):
            return _JAIL
        root, keeper, prefix = os.geteuid() == 0, None, []
        tools = [shutil.which(t) for t in ("unshare", "nsenter")]
        if root and all(tools):
            keeper = subprocess.Popen([tools[0], "--net", "cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)  # exits when we do (EOF)
            ns = f"/proc/{keeper.pid}/ns/net"
            for _ in range(200):  # until unshare has switched (or failed)
                with contextlib.suppress(OSError):
                    if keeper.poll() is not None or os.readlink(ns) != os.readlink("/proc/self/ns/net"):
                        break
                time.sleep(0.01)
            prefix, ok = [tools[1], f"--net={ns}", tools[0], "--pid", "--fork", "--kill-child"], False
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                ok = os.readlink(ns) != os.readlink("/proc/self/ns/net") and subprocess.run(
                    prefix + ["true"], capture_output=True, timeout=10).returncode == 0
            if not ok:
                keeper.kill()
                keeper, prefix = None, []
        _JAIL.update(pid=os.getpid(), root=root, keeper=keeper, prefix=prefix)
        return _JAIL


@atexit.register
def _cleanup() -> None:
    """At exit, kill the children of abandoned runs (reward_many gives up on hung jobs) and remove their folders."""
    for pgid, d in list(_LIVE):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(d, True)


def sandbox_info() -> str:
    """One line saying which confinement mechanisms are in force here."""
    j = _jail()
    return (f"uid switching: {'yes' if j['root'] else 'no (not root)'} | pid+net namespaces: "
            f"{'yes' if j['prefix'] else 'no (audit hook refuses sockets and process creation)'}")


@contextlib.contextmanager
def _uid_slot(root: bool):
    """A sandbox uid that no other sandbox, in any process, holds now (flock on a file per uid)."""
    if not root:
        yield None
        return
    d = "/tmp/.rewards-uids"  # fixed (not $TMPDIR) so that every process on the machine sees the same locks
    os.makedirs(d, mode=0o700, exist_ok=True)
    start = random.randrange(_UID_COUNT)
    for k in range(_UID_COUNT):
        uid = _UID_BASE + (start + k) % _UID_COUNT
        fd = os.open(os.path.join(d, str(uid)), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise RuntimeError("no free sandbox uid")


def _finish(p: subprocess.Popen, mark: bytes | None, timeout_s: float) -> tuple[int, bool]:
    """Send the marker, wait up to timeout_s, then SIGKILL the whole process group before reaping (so the group
    id cannot have been reused). Returns (exit status, timed out)."""
    if mark is not None:
        with contextlib.suppress(OSError):
            p.stdin.write(mark)
            p.stdin.close()
    try:
        fd = os.pidfd_open(p.pid)  # readable when p exits; p stays unreaped
        try:
            done = bool(select.select([fd], [], [], timeout_s)[0])
        finally:
            os.close(fd)
    except (AttributeError, OSError):  # no pidfd (old kernel): plain wait, which reaps
        try:
            done = p.wait(timeout_s) is not None
        except subprocess.TimeoutExpired:
            done = False
    with contextlib.suppress(OSError):
        os.killpg(p.pid, signal.SIGKILL)  # always: whatever stayed in the group dies too
    return p.wait(), not done


def same_output(got: str, want: str) -> bool:
    """Equal lines after stripping; within a line, tokens equal or (when the expected token has a '.') within 1e-6."""
    g, w = [x.rstrip() for x in got.strip().splitlines()], [x.rstrip() for x in want.strip().splitlines()]
    if g == w:
        return True
    if len(g) != len(w):
        return False
    for gl, wl in zip(g, w):
        gt, wt = gl.split(), wl.split()
        if len(gt) != len(wt):
            return False
        for x, y in zip(gt, wt):
            try:
                if x != y and ("." not in y or not math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-6)):
                    return False
            except ValueError:
                return False
    return True


def _verdict(rc: int, timed_out: bool, ready: bool, out: bytes, err: bytes, test: dict, mark: bytes, cap: int):
    """(passed, status) from how the child ended and what it printed."""
    sig = -rc if rc < 0 else (rc - 128 if rc > 128 and _jail()["prefix"] else 0)
    if timed_out or sig == signal.SIGXCPU:
        return False, "timeout"
    if sig == signal.SIGXFSZ or len(out) > cap or b"File too large" in err:
        return False, "output limit"
    if b"MemoryError" in err:
        return False, "memory"
    if not ready:  # the child never reached the program: no python, no namespaces, a broken child
        return False, "sandbox error"
    if "functional" in test:
        if rc == 0 and mark in out:
            return True, "pass"
        return False, "wrong answer" if rc == 0 or b"AssertionError" in err else "runtime error"
    if rc != 0:
        return False, "runtime error"
    ok = same_output(out.decode("utf-8", "replace"), test["output"])
    return ok, "pass" if ok else "wrong answer"


def _argv(jail: dict, uid: int | None, fn: bool, timeout_s: float, memory_mb: int, output_mb: int) -> list[str]:
    """The child's command line: namespace prefix, isolated python, the boot line and the child's configuration."""
    cpu = math.ceil(timeout_s) + 1
    limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
              (resource.RLIMIT_FSIZE, output_mb << 20, output_mb << 20), (resource.RLIMIT_NOFILE, 64, 64),
              (resource.RLIMIT_CORE, 0, 0)] + ([(resource.RLIMIT_NPROC, 64, 64)] if uid is not None else [])
    block = ([] if jail["prefix"] else _SPAWN_EVENTS) + ([] if jail["root"] else _KILL_EVENTS)
    cfg = {"limits": limits, "uid": uid, "fn": fn, "alarm": cpu + 2, "path": _SITE, "block": block}
    return jail["prefix"] + [sys.executable, "-I", "-S", "-B", "-c", _BOOT, "--sandbox-child", repr(cfg)]


def valid_test(t) -> bool:
    """Whether t is a test record run_tests understands."""
    return isinstance(t, dict) and (isinstance(t.get("functional"), str) or (
        isinstance(t.get("input"), str) and isinstance(t.get("output"), str)))


def _run_one(code: str, test: dict, timeout_s: float, memory_mb: int, output_mb: int) -> TestResult:
    """One test in one confined child (see the module docstring)."""
    if not valid_test(test):
        return TestResult(False, "sandbox error", detail="malformed test record")
    jail, fn, mark = _jail(), "functional" in test, os.urandom(16).hex().encode()
    with _uid_slot(jail["root"]) as uid, contextlib.ExitStack() as st:
        d = tempfile.mkdtemp(prefix="rw-")
        st.callback(shutil.rmtree, d, True)
        with open(os.path.join(d, "main.py"), "w") as f:
            f.write(f"{test.get('prefix', '')}\n{code}\n{test['functional']}\n" if fn else code)
        if uid is not None:
            os.chown(d, uid, uid)
        out, err, stdin = (st.enter_context(tempfile.TemporaryFile()) for _ in range(3))  # unlinked files
        stdin.write(b"" if fn else test["input"].encode())
        stdin.seek(0)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": d, "TMPDIR": d, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        t0 = time.monotonic()
        p = subprocess.Popen(_argv(jail, uid, fn, timeout_s, memory_mb, output_mb), cwd=d, env=env,
                             stdin=subprocess.PIPE if fn else stdin, stdout=out, stderr=err, start_new_session=True)
        _LIVE.add((p.pid, d))
        st.callback(_LIVE.discard, (p.pid, d))
        rc, timed_out = _finish(p, mark if fn else None, timeout_s)
        elapsed, cap = time.monotonic() - t0, output_mb << 20
        out.seek(0)
        err.seek(0)
        ready = err.read(len(_READY)) == _READY
        err.seek(max(len(_READY) if ready else 0, err.seek(0, 2) - 4000))
        stdout, stderr = out.read(cap + 1), err.read()
        passed, status = _verdict(rc, timed_out, ready, stdout, stderr, test, mark, cap)
        return TestResult(passed, status, elapsed, "" if passed else stderr.decode("utf-8", "replace")[-1000:])


def run_tests(code: str, tests, timeout_s: float = 10.0, memory_mb: int = 1024, max_tests: int | None = 16,
              seed: int = 0, stop_on_fail: bool = False, output_mb: int = 16) -> list[TestResult]:
    """Run code on up to max_tests tests (a seeded sample; 0/None: all), each in its own sandboxed child.
    stop_on_fail marks the tests after the first failure 'skipped' (hard rewards need no more)."""
    tests = list(tests) if isinstance(tests, (list, tuple)) else []
    if max_tests and len(tests) > max_tests:
        tests = random.Random(seed).sample(tests, max_tests)
    results: list[TestResult] = []
    for t in tests:
        if stop_on_fail and results and not results[-1].passed:
            results.append(TestResult(False, "skipped", detail="an earlier test failed"))
            continue
        try:
            results.append(_run_one(code, t, timeout_s, memory_mb, output_mb))
        except Exception as e:  # the trainer must never see a sandbox exception
            results.append(TestResult(False, "sandbox error", detail=repr(e)))
    return results
