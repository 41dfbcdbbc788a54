"""Running untrusted programs against tests: isolation, limits, verdicts (`run_tests`).

Limits and verdict rules: docs/ALGORITHM.md 4. Each test runs in its own child (the code above the
parent's imports, compiled once per process) with rlimits, a wall-time limit, a fresh folder and a
clean environment; its process group is always SIGKILLed; a ready token on stderr tells a verdict
from a 'sandbox error'. As root the child also gets its own uid, a fresh pid namespace, an empty
network namespace and, where mount namespaces are allowed, a private read-only filesystem view (the
stdlib, PACKAGES, its folder; no project, data, /etc or host /proc). Always, an audit hook refuses
sockets and writes outside the folder (without namespaces also process creation; without a uid of
its own, kill()). Function tests of known assert shapes (rewards._check_tests) run the call in the
child and judge here its result, sent back as a literal of exact built-in types: lying objects,
patched builtins or forged output earn no more than returning the value. Other test code passes only
if the child prints a random marker after it returns ('in-sandbox verdict').

Run: pytest tests/test_sandbox.py ; python bench.py rewards --data DIR
"""
from __future__ import annotations

import os
import sys

STATUSES = ("pass", "wrong answer", "runtime error", "timeout", "memory", "output limit", "sandbox error", "skipped")
NOTES = ("in-sandbox verdict", "no private filesystem")  # counted beside STATUSES, not verdicts
# third-party modules a judged program may import (requirements.txt pins them)
PACKAGES = ("sortedcontainers",)
_READY = b"\0sandbox ready\n"  # the child's first stderr bytes; missing: the sandbox failed
_WRITE_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.truncate",
                 "os.symlink", "os.link", "os.utime", "shutil.rmtree")


# ---------------------------------------------------------------------------------------- the child
def _child_confine(c: dict) -> None:
    """Limits, the private root, import paths, the uid drop; as pid 1 of a pid namespace, fork and
    mirror."""
    import _signal as signal  # not `signal`: its enum import costs the child ~10 ms
    import resource
    for k, soft, hard in c["limits"]:
        resource.setrlimit(k, (soft, hard))
    if c["root"]:
        os.chroot(c["root"])
        os.chdir(c["cwd"])
    paths = [p for p in sys.path + c["path"] if os.path.isdir(p)]
    if c["uid"] and not c["root"]:  # keep import paths (/root/...) reachable: fds opened as root
        new = ["/proc/self/fd/%d" % os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in paths]
        moved = lambda x: next((n + x[len(p):] for p, n in zip(paths, new) if x.startswith(p + "/")), x)
        for m in list(sys.modules.values()):  # packages imported at start-up (encodings, ...)
            if isinstance(getattr(m, "__path__", None), list):
                m.__path__[:] = [moved(x) for x in m.__path__]
        paths = new
    if c["uid"]:
        os.setgroups([])
        os.setgid(c["uid"])
        os.setuid(c["uid"])
    sys.path[:] = paths
    signal.signal(signal.SIGALRM, lambda *a: os._exit(137))
    signal.alarm(c["alarm"])
    if os.getpid() == 1:  # init of a pid namespace: run the program as a child, mirror its end
        pid = os.fork()
        if pid:
            st = os.waitpid(pid, 0)[1]
            os._exit(128 + os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))


def _child_hook(block: list[str]) -> None:
    """The audit hook: no sockets, no writes outside the working folder, no events in `block`."""
    here, block, events, real = os.getcwd(), frozenset(block), frozenset(_WRITE_EVENTS), os.path.realpath
    wr = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

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


def _encoder(cap: int):
    """enc(x): x as a literal of exact built-in types only (nested too); TypeError for anything
    else, subclasses included; ValueError past `cap` characters. Bound before the program runs, so
    patched builtins do not reach it."""
    tp, rp, fl, ln, left, atoms = type, repr, float, len, [cap], (int, bool, str, bytes, type(None))

    def enc(x, depth: int = 0) -> str:
        t = tp(x)
        if depth > 100:
            raise ValueError("nested too deep")
        if any(t is a for a in atoms):
            s = t.__repr__(x)
        elif t is fl:
            # inf - inf and nan - nan are nan
            s = fl.__repr__(x) if x - x == 0 else "float('%s')" % fl.__repr__(x)
        elif t is complex:
            s = "complex(%s, %s)" % (enc(x.real, depth + 1), enc(x.imag, depth + 1))
        elif t is list or t is tuple or t is set or t is frozenset:
            items = ", ".join([enc(v, depth + 1) for v in x])
            s = ("[%s]" if t is list else "(%s,)" if t is tuple and items else "(%s)" if t is tuple else
                 "{%s}" if t is set and items else "set(%s)" if t is set else "frozenset([%s])") % items
        elif t is dict:
            s = "{%s}" % ", ".join([enc(k, depth + 1) + ": " + enc(v, depth + 1) for k, v in x.items()])
        else:
            raise TypeError(rp(t.__name__))
        left[0] -= ln(s)
        if left[0] < 0:
            raise ValueError("result too large")
        return s
    return enc


def _child_calls(c: dict, g: dict, exprs: list, out: int) -> None:
    """Evaluate each split call after the program and write one line per call to `out`: '=' + its
    literal, '!' + the exception's name, or '?' + the type that has no literal."""
    enc, rp, tp, wr = _encoder(c["cap"]), repr, type, os.write
    try:
        g["candidate"] = eval(c["entry"], g) if c["entry"] else None
    except BaseException as e:
        for _ in exprs:
            wr(out, b"!" + rp(tp(e).__name__).encode() + b"\n")
        return
    for e in exprs:
        try:
            v = eval(e, g)
        except BaseException as err:  # SystemExit too: the call did not return
            line = "!" + rp(tp(err).__name__)
        else:
            try:
                line = "=" + enc(v)
            except (TypeError, ValueError, RecursionError, MemoryError):
                line = "?" + rp(tp(v).__name__)
        wr(out, line.encode("utf-8", "backslashreplace") + b"\n")


def _child() -> None:
    """The sandboxed process: confine, run main.py, then write the marker or the calls' results."""
    # our own repr() of ints, strings, lists and dicts: no user data
    c = eval(sys.argv[3], {"__builtins__": {}})
    sys.argv[:] = ["main.py"]
    _child_confine(c)
    if c["mode"] != "io":  # stdin carries the marker or the calls; the program reads an empty stdin
        got = b"".join(iter(lambda: os.read(0, 1 << 16), b""))
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    out = os.dup(1)
    if c["mode"] == "calls":  # results go to `out`; whatever the program prints goes to stderr
        os.dup2(2, 1)
        exprs = eval(got.decode(), {"__builtins__": {}})  # our own repr() of a list of strings
    _child_hook(c["block"])
    os.write(2, _READY)
    builtins = sys.modules["builtins"]
    builtins.exit = builtins.quit = sys.exit  # normally added by site, which -S skips
    g = {"__name__": "__main__", "__file__": "main.py", "__builtins__": builtins}
    exec(compile(open("main.py").read(), "main.py", "exec"), g)
    if c["mode"] == "mark":
        os.write(out, b"\n" + got + b"\n")
    elif c["mode"] == "calls":
        _child_calls(c, g, exprs, out)
    sys.exit(0)


if sys.argv[0] == "-c" and sys.argv[1:2] == ["--sandbox-child"]:
    _child()

# --------------------------------------------------------------------------------------- the parent
# (imported below the child's code so that the child never pays for these modules)
import ast  # noqa: E402
import atexit  # noqa: E402
import contextlib  # noqa: E402
import fcntl  # noqa: E402
import importlib.util  # noqa: E402
import marshal  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

# The child's -c line: run the code above the parent's imports, compiled once per process
# (_child_file), so that no child compiles this file or imports the parent's modules.
_BOOT = "import marshal, sys; exec(marshal.loads(open(sys.argv[2], 'rb').read()))"
_SPAWN_EVENTS = ["os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "subprocess.Popen"]
_KILL_EVENTS = ["os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlsym"]
_SITE = [p for p in sys.path if p and os.path.isdir(p) and ("site-packages" in p or "dist-packages" in p)]
_UID_BASE, _UID_COUNT = 61000, 1024
_LIVE: set[tuple[int, str]] = set()  # (process group, dir) of running children
_JAIL: dict = {}
# expected values, computed once each: (prefix, setup, expression) -> ("ok", value) | ("no", why)
_EXPECT: dict = {}
_LOCK = threading.Lock()  # of _JAIL and _EXPECT


@dataclass
class TestResult:
    passed: bool
    status: str  # one of STATUSES
    detail: str = ""  # why, or the tail of stderr
    notes: tuple = ()  # of NOTES: how the test ran, when that is worth counting


def run_tests(code: str, tests, timeout_s: float = 10.0, memory_mb: int = 1024, max_tests: int | None = 16,
              seed: int = 0, stop_on_fail: bool = False, output_mb: int = 16) -> list[TestResult]:
    """Run code on up to max_tests tests (a seeded sample; 0/None: all), each in its own sandboxed
    child. stop_on_fail marks the tests after the first failure 'skipped' (hard rewards)."""
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


def valid_test(t) -> bool:
    """Whether t is a test record: stdin ({"input", "output"}), function code ({"functional"[,
    "prefix"]}) or split calls ({"calls", "checks", "entry"[, "prefix", "setup", "functional"]})."""
    if not isinstance(t, dict):
        return False
    if "calls" in t:
        return (isinstance(t["calls"], list) and isinstance(t.get("checks"), list)
                and len(t["calls"]) == len(t["checks"]) and isinstance(t.get("entry"), str)
                and all(isinstance(c, str) for c in t["calls"])
                and all(isinstance(k, list) and k and all(isinstance(x, str) for x in k) for k in t["checks"]))
    return isinstance(t.get("functional"), str) or all(isinstance(t.get(k), str) for k in ("input", "output"))


def _run_one(code: str, test: dict, timeout_s: float, memory_mb: int, output_mb: int) -> TestResult:
    """One test in one child: stdin/stdout ('io'), split calls ('calls') or assert code ('mark')."""
    if not valid_test(test):
        return TestResult(False, "sandbox error", detail="malformed test record")
    notes, prefix = () if _jail()["view"] else ("no private filesystem",), test.get("prefix", "")
    want = _expected(test, timeout_s, memory_mb) if "calls" in test else None
    if want is not None:
        main, mode, stdin = f"{prefix}\n{code}\n{test.get('setup', '')}\n", "calls", repr(test["calls"]).encode()
    elif "functional" in test:
        main, mode, stdin = f"{prefix}\n{code}\n{test['functional']}\n", "mark", os.urandom(16).hex().encode()
        notes += ("in-sandbox verdict",)
    elif "calls" in test:
        return TestResult(False, "sandbox error", detail="an expected value has no plain literal")
    else:
        main, mode, stdin = code, "io", test["input"].encode()
    entry = test["entry"] if mode == "calls" else None
    rc, timed_out, ready, out, err = _spawn(main, mode, stdin, entry, timeout_s, memory_mb, output_mb)
    status, detail = _ending(mode, rc, timed_out, ready, out, err, output_mb << 20), err.decode("utf-8", "replace")
    if status:
        return TestResult(False, status, detail[-1000:], notes)
    if mode == "calls":
        passed, status, why = _judge_calls(out, test, want)
        return TestResult(passed, status, "" if passed else why + "\n" + detail[-500:], notes)
    passed = stdin in out if mode == "mark" else same_output(out.decode("utf-8", "replace"), test["output"])
    return TestResult(passed, "pass" if passed else "wrong answer", "" if passed else detail[-1000:], notes)


def _ending(mode: str, rc: int, timed_out: bool, ready: bool, out: bytes, err: bytes, cap: int) -> str | None:
    """The failing status that how the child ended decides, or None when its output decides."""
    sig = -rc if rc < 0 else (rc - 128 if rc > 128 and _jail()["prefix"] else 0)
    if timed_out or sig == signal.SIGXCPU:
        return "timeout"
    if sig == signal.SIGXFSZ or len(out) > cap or b"File too large" in err:
        return "output limit"
    if b"MemoryError" in err:
        return "memory"
    if not ready:  # the child never reached the program: no python, no namespaces, a broken child
        return "sandbox error"
    if rc != 0:
        return "wrong answer" if mode == "mark" and b"AssertionError" in err else "runtime error"
    return None


def _spawn(main: str, mode: str, stdin: bytes, entry, timeout_s: float, memory_mb: int, output_mb: int):
    """(exit status, timed out, reached the program, stdout, stderr tail) of main.py in one confined
    child."""
    jail, cpu, cap = _jail(), math.ceil(timeout_s) + 1, output_mb << 20
    with contextlib.ExitStack() as st:
        uid = None
        if jail["root"]:
            uid, lock = _take_uid()
            st.callback(os.close, lock)
        d = tempfile.mkdtemp(prefix="rw-", dir=jail["view"] and jail["view"]["work"])
        st.callback(shutil.rmtree, d, True)
        with open(os.path.join(d, "main.py"), "w") as f:
            f.write(main)
        if uid is not None:
            os.chown(d, uid, uid)
        limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
                  (resource.RLIMIT_FSIZE, cap, cap), (resource.RLIMIT_NOFILE, 64, 64), (resource.RLIMIT_CORE, 0, 0)
                  ] + ([(resource.RLIMIT_NPROC, 64, 64)] if uid is not None else [])
        block = ([] if jail["prefix"] else _SPAWN_EVENTS) + ([] if jail["root"] else _KILL_EVENTS)
        cfg = {"limits": limits, "uid": uid, "mode": mode, "entry": entry, "cap": cap // 2, "alarm": cpu + 2,
               "path": ["/sandbox-packages"] if jail["view"] else _SITE, "block": block,
               "root": jail["view"] and jail["view"]["root"], "cwd": d}
        argv = jail["prefix"] + [sys.executable, "-I", "-S", "-B", "-c", _BOOT, "--sandbox-child", jail["child"],
                                 repr(cfg)]
        out, err, inp = (st.enter_context(tempfile.TemporaryFile()) for _ in range(3))  # unlinked
        inp.write(stdin)
        inp.seek(0)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": d, "TMPDIR": d, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        p = subprocess.Popen(argv, cwd=d, env=env, stdin=inp, stdout=out, stderr=err, start_new_session=True)
        _LIVE.add((p.pid, d))
        st.callback(_LIVE.discard, (p.pid, d))
        rc, timed_out = _finish(p, timeout_s, bool(jail["prefix"]))
        out.seek(0)
        err.seek(0)
        ready = err.read(len(_READY)) == _READY
        err.seek(max(len(_READY) if ready else 0, err.seek(0, 2) - 4000))
        return rc, timed_out, ready, out.read(cap + 1), err.read()


def readable(fd: int, timeout_s: float) -> bool:
    """Whether fd is readable (or closed) within timeout_s; poll, not select, which fails for fds >=
    1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    # poll takes whole milliseconds, at most 2**31 - 1; None waits without end
    ms = -1 if timeout_s is None else min(math.ceil(max(0.0, timeout_s) * 1000), 2**31 - 1)
    return bool(poller.poll(ms))


def _finish(p: subprocess.Popen, timeout_s: float, pid_ns: bool) -> tuple[int, bool]:
    """Wait up to timeout_s, then SIGKILL the whole process group before reaping (so the group id
    cannot have been reused). Returns (exit status, timed out)."""
    done = False
    try:
        fd = os.pidfd_open(p.pid)  # readable when p exits; p stays unreaped
        try:
            done = readable(fd, timeout_s)
        finally:
            os.close(fd)
    # no pidfd (kernel < 5.3, seccomp, or a Python built without os.pidfd_open): plain wait, which reaps
    except (AttributeError, OSError):
        with contextlib.suppress(subprocess.TimeoutExpired):
            done = p.wait(timeout_s) is not None
    finally:
        # p is `unshare --fork`: kill its child (the namespace's init) first so that p reaps it; killed
        # together it is an orphan that a pid-1 trainer never reaps: a zombie held against the sandbox uid
        with contextlib.suppress(OSError, ValueError):
            children = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split() if pid_ns and not done else []
            for child in children:
                os.kill(int(child), signal.SIGKILL)
            # p exits at once: wait for that (at most 5 s) without reaping it
            for _ in range(500 if children else 0):
                if os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                    break
                time.sleep(0.01)
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)  # always: whatever stayed in the group dies too
    return p.wait(), not done


def _take_uid() -> tuple[int, int]:
    """A uid that no other sandbox, in any process, holds now, and the fd of its flock (close: free
    it)."""
    d = "/tmp/.rewards-uids"  # not $TMPDIR: every process on the machine sees the same locks
    os.makedirs(d, mode=0o700, exist_ok=True)
    start = random.randrange(_UID_COUNT)
    for k in range(_UID_COUNT):
        uid = _UID_BASE + (start + k) % _UID_COUNT
        fd = os.open(os.path.join(d, str(uid)), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    raise RuntimeError("no free sandbox uid")


def same_output(got: str, want: str) -> bool:
    """Equal lines of whitespace-separated tokens; off by 1e-6 is equal where the expected one has a
    '.'."""
    g, w = ([line.split() for line in s.strip().splitlines()] for s in (got, want))
    if len(g) != len(w) or any(len(a) != len(b) for a, b in zip(g, w)):
        return False
    try:
        return all(x == y or ("." in y and math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-6))
                   for a, b in zip(g, w) for x, y in zip(a, b))
    except ValueError:  # not a number where the expected token has a '.'
        return False


def literal(text: str):
    """The value of an _encoder literal (or a plain literal from test data): exact built-in types
    only, parsed by node type (no eval). ValueError/SyntaxError for anything else."""
    calls = {"float": float, "complex": complex, "set": set, "frozenset": frozenset}

    def val(n):
        if isinstance(n, ast.Constant) and type(n.value) in (int, float, complex, str, bytes, bool, type(None)):
            return n.value
        if (isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd))
                and isinstance(n.operand, ast.Constant)):
            v = val(n.operand)
            if type(v) in (int, float, complex):
                return -v if isinstance(n.op, ast.USub) else v
        if isinstance(n, (ast.List, ast.Tuple, ast.Set)):
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(n)](val(e) for e in n.elts)
        if isinstance(n, ast.Dict) and None not in n.keys:
            return {val(k): val(v) for k, v in zip(n.keys, n.values)}
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in calls
                and not n.keywords and len(n.args) <= 2):
            args = [val(a) for a in n.args]
            if n.func.id != "float" or (len(args) == 1 and args[0] in ("inf", "-inf", "nan")):
                return calls[n.func.id](*args)
        raise ValueError(f"not a plain literal: {ast.dump(n)[:80]}")
    return val(ast.parse(text.strip(), mode="eval").body)


def _expected(test: dict, timeout_s: float, memory_mb: int) -> list | None:
    """Values of a split test's expected expressions: literals parsed here, others evaluated (and
    cached) by a child running the test's prefix and setup, not the program. None: one has none."""
    exprs, got = [e for chk in test["checks"] for e in chk[1:]], {}
    key = lambda e: (test.get("prefix", ""), test.get("setup", ""), e)
    for e in exprs:
        try:
            got[e] = ("ok", literal(e))
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            got[e] = _EXPECT.get(key(e))
    todo = [e for e in exprs if got[e] is None]
    if todo:
        code = f"{test.get('prefix', '')}\n{test.get('setup', '')}\n"
        _, _, ready, out, _ = _spawn(code, "calls", repr(todo).encode(), None, timeout_s, memory_mb, 16)
        lines = out.decode("utf-8", "replace").split("\n")
        for e, line in zip(todo, lines + [""] * len(todo)):
            try:
                got[e] = ("ok", literal(line[1:])) if line.startswith("=") else ("no", line[:100])
            except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
                got[e] = ("no", line[:100])
        if ready:  # a sandbox that failed to start says nothing about them: ask again next time
            with _LOCK:
                if len(_EXPECT) > 100_000:
                    _EXPECT.clear()
                _EXPECT.update((key(e), got[e]) for e in todo)
    return [got[e][1] for e in exprs] if all(got[e][0] == "ok" for e in exprs) else None


def _judge_calls(out: bytes, test: dict, want: list) -> tuple[bool, str, str]:
    """(passed, status, detail) of a split test from the child's result lines and expected values. A
    result line only claims a return value: forging one earns what returning that value earns."""
    lines = out.decode("utf-8", "replace").split("\n")[:-1]
    if len(lines) != len(test["calls"]):
        return False, "wrong answer", f"{len(lines)} results for {len(test['calls'])} calls"
    k = 0
    for line, call, check in zip(lines, test["calls"], test["checks"]):
        w, k = want[k:k + len(check) - 1], k + len(check) - 1
        if line[:1] == "!":
            return False, "memory" if line == "!'MemoryError'" else "runtime error", f"{call[:200]} raised {line[1:]}"
        if line[:1] == "?":
            return False, "wrong answer", f"{call[:200]} returned a {line[1:]}, which has no plain value"
        try:
            got = literal(line[1:])
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            return False, "wrong answer", f"{call[:200]}: unreadable result"
        if line[:1] != "=" or not _holds(check, got, w):
            return False, "wrong answer", f"{call[:200]} returned {line[1:200]}"
    return True, "pass", ""


def _holds(check: list, got, want: list) -> bool:
    """Whether a decoded result satisfies one check (rewards._shape), judged here, not in the child."""
    kind = check[0]
    try:
        if kind in ("eq", "eq_any"):
            # TACO fn_name outputs: a tuple result compares as a list, [x] also accepts x
            got = list(got) if kind == "eq_any" and type(got) is tuple else got
            return got == want[0] or (kind == "eq_any" and type(want[0]) is list and len(want[0]) == 1
                                      and got == want[0][0])
        if kind in ("truthy", "falsy"):
            return bool(got) == (kind == "truthy")
        if kind == "is":
            return got is want[0]
        if kind == "isclose":
            return type(got) in (int, float) and math.isclose(got, want[0], rel_tol=want[1], abs_tol=want[2])
        if kind in ("abs<", "abs<="):
            d = abs(got - want[0])
            return d < want[1] if kind == "abs<" else d <= want[1]
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False
    return False


# -------------------------------------------------------------------------------------- confinement
def _jail() -> dict:
    """How children are confined here, decided once per process: root (uid switching), the command
    prefix into the shared empty network namespace and a fresh pid namespace, the private view."""
    with _LOCK:
        if _JAIL.get("pid") == os.getpid() and (_JAIL["keeper"] is None or _JAIL["keeper"].poll() is None):
            return _JAIL
        root, keeper, prefix, view = os.geteuid() == 0, None, [], None
        tools = [shutil.which(t) for t in ("unshare", "nsenter", "mount")]
        if root and all(tools):
            view = {"root": tempfile.mkdtemp(prefix="sandbox-root-"), "work": tempfile.mkdtemp(prefix="sandbox-work-")}
            os.chmod(view["work"], 0o711)  # the tests' folders can be entered, not listed
            keeper, prefix, view = _keeper(tools, view)
        _JAIL.update(pid=os.getpid(), root=root, keeper=keeper, prefix=prefix, view=view, child=_child_file())
        return _JAIL


def _keeper(tools: list, view: dict | None):
    """A process holding an empty network namespace (with `view`, also a mount namespace with the
    private root) until we exit: (keeper, every child's command prefix, view); else (None, [], None)."""
    script = _view_script(view["root"], view["work"]) if view else "echo ready; exec cat"
    cmd = [tools[0], "--net"] + (["--mount", "--propagation", "private"] if view else []) + ["sh", "-c", script]
    keeper = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    ready = readable(keeper.stdout.fileno(), 30) and keeper.stdout.readline() == b"ready\n"
    ns = f"/proc/{keeper.pid}/ns/"
    prefix = [tools[1], f"--net={ns}net"] + ([f"--mount={ns}mnt"] if view else []) + [
        tools[0], "--pid", "--fork", "--kill-child"] + ([f"--mount-proc={view['root']}/proc"] if view else [])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if ready and subprocess.run(prefix + ["true"], capture_output=True, timeout=10).returncode == 0:
            return keeper, prefix, view
    keeper.kill()
    keeper.wait()
    if not view:
        return None, [], None
    err = keeper.stderr.read().decode(errors="replace").strip().splitlines()
    print(f"sandbox: no private filesystem view (mount namespace refused: {err[-1] if err else 'no reason'}); "
          "programs see the host's world-readable files", file=sys.stderr)
    for d in view.values():
        shutil.rmtree(d, True)
    return _keeper(tools, None)


def _view_script(root: str, work: str) -> str:
    """Shell commands that build the private root in the keeper's mount namespace: a read-only tmpfs
    holding, at their host paths, the stdlib and the shared libraries its extensions load (read-only
    binds, site-packages hidden), PACKAGES in /sandbox-packages, /dev/null, /dev/urandom, `work`."""
    q, stdlib = shlex.quote, sysconfig.get_path("stdlib")
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    ro = [stdlib] + [p for p in (os.path.join(stdlib, "lib-dynload"), f"/usr/lib/{arch}", f"/lib/{arch}")
                     if arch and os.path.isdir(p) and os.path.realpath(p) == p and not p.startswith(stdlib + "/")]
    binds = [(p, p, "ro") for p in ro] + [(p, p, "rw") for p in ("/dev/null", "/dev/urandom", work)]
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            binds.append((list(spec.submodule_search_locations)[0], f"/sandbox-packages/{name}", "ro"))
    cmds = ["set -e", f"mount -t tmpfs -o mode=0711,size=1m sandbox-root {q(root)}",
            f"mkdir -p {q(root)}/proc {q(root)}/sandbox-packages"]
    cmds += [f"mkdir -p {q(root + d)}" if os.path.isdir(h) else f"mkdir -p {q(root + os.path.dirname(d))}; "
             f"touch {q(root + d)}" for h, d, _ in binds]
    cmds += [f"find {q(root)} -type d -exec chmod 0711 {{}} +", f"chmod 0755 {q(root)}/sandbox-packages"]
    # listing is refused on the skeleton's folders, not inside the binds
    for host, inside, mode in binds:
        cmds.append(f"mount --bind {q(host)} {q(root + inside)}")
        cmds += [f"mount -o remount,bind,ro {q(root + inside)}"] if mode == "ro" else []
    cmds += [f"mount -t tmpfs -o ro,size=4k hidden {q(root + p)}" for p in _SITE if p.startswith(stdlib + "/")]
    if os.path.islink("/lib") and os.path.isdir(f"/usr/lib/{arch}"):
        # the dynamic loader's /lib/<arch> on merged-/usr hosts
        cmds.append(f"ln -s usr/lib {q(root)}/lib")
    return "\n".join(cmds + [f"mount -o remount,ro {q(root)}", "echo ready", "exec cat"])


def _child_file() -> str:
    """A private file (mode 0600) holding the compiled child part of this file; removed at exit."""
    with open(__file__) as f:
        src = f.read()
    code = compile(src[:src.index("# " + "-" * 87 + " the parent")], __file__, "exec")
    fd, path = tempfile.mkstemp(prefix="sandbox-child-", suffix=".bin")
    with os.fdopen(fd, "wb") as f:
        f.write(marshal.dumps(code))
    return path


@atexit.register
def _cleanup() -> None:
    """At exit, kill abandoned runs' children (reward_many gives up on hung jobs); remove our files."""
    for pgid, d in list(_LIVE):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(d, True)
    if _JAIL.get("pid") == os.getpid():
        for d in (_JAIL["view"] or {}).values():
            shutil.rmtree(d, True)
        with contextlib.suppress(OSError):
            os.remove(_JAIL["child"])


def sandbox_info() -> str:
    """One line saying which confinement mechanisms are in force here."""
    j = _jail()
    return (f"uid switching: {'yes' if j['root'] else 'no (not root)'} | pid+net namespaces: "
            f"{'yes' if j['prefix'] else 'no (audit hook refuses sockets and process creation)'} | private "
            f"filesystem view: {'yes' if j['view'] else 'no (programs see world-readable host files)'}")
