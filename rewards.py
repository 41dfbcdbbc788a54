"""Rewards for RL: math answer checking, sandboxed code execution, and the Klear reward scheme (RECIPE.md 4).

Math
- extract_answer: the last \\boxed{...} / \\fbox{...} (nested braces), else an "answer is X" / "Answer: X"
  phrase, else the whole text when it is one short line; None otherwise.
- math_equal: our own LaTeX normaliser (\\left, spacing, \\text units, $, %, degrees, thousands separators,
  mixed numbers, inequalities as intervals) and structure split: sets, bare comma lists and \\pm are unordered;
  tuples, intervals (brackets must match) and matrices are ordered; a column vector equals a tuple. Leaves go
  through a small LaTeX -> sympy converter (parse_expr over a whitelist of names, no eval of anything else):
  exact rationals (decimals become rationals; a decimal may approximate a non-terminating gold fraction to rel
  1e-4), else 30-digit numerics (rel 1e-10, or 1e-4 when a side is written as a decimal), agreement at random
  points for expressions with symbols, then simplify. "x = 5" equals 5 (and "y = 2x+1" equals "2x+1"); two
  equations are equal when lhs - rhs are proportional (y = 2x+1 == 2x - y + 1 = 0). A % or degree mark also
  admits value/100 or value*pi/180. Choice letters "(C)" match "C"; words compare case-insensitively.
- Time bound: sympy only ever runs in helper processes (`python rewards.py --serve`, started on demand, at most
  one per core). A check that outlives timeout_s (default 1 s) kills its helper and returns False; a warm
  replacement is started at once. Works from any thread; sympy never runs in the caller (it cannot be
  interrupted there). Plain numbers and identical normal forms are decided in-process without a helper.

Code (run_tests): one child per test, `python -I -S -B -c PREAMBLE` running main.py in a fresh temp dir that is
removed afterwards, with a clean env, stdin = the test input (function tests: a pipe carrying a random marker,
then /dev/null), stdout/stderr to unlinked temp files capped by RLIMIT_FSIZE, and RLIMIT_CPU/AS/FSIZE/NOFILE/
CORE(/NPROC) plus a wall-time limit; the child is its own session and its process group is SIGKILLed always.
- As root the preamble drops to a per-sandbox uid (flock-reserved from 61000-62023, so concurrent sandboxes in
  any process never share one): NPROC is enforced, nothing outside its dir is writable, other processes cannot
  be signalled. Import paths stay reachable through /proc/self/fd handles opened before the drop.
- With unshare/nsenter (root): each child joins one long-lived empty network namespace (no network, not even
  loopback) and gets a fresh pid namespace whose init (the preamble) runs the program as its child: when the
  program ends, every process it left behind (setsid grandchildren included) dies with the namespace.
- Always: an audit hook refuses sockets and Python-level writes outside the dir. Without a pid namespace it
  also refuses process creation; without uid switching it refuses kill() and ctypes symbol lookups.
- Function tests pass only if the harness prints the random marker after the test code returns (sys.exit(0),
  os._exit(0), atexit tricks or patched builtins before a failing assert earn nothing); stdin tests pass on
  exit 0 and equal stdout lines (trailing whitespace ignored; tokens with a '.' may differ by 1e-6).
- Any sandbox failure is a failed TestResult with a status, never an exception.

Run: pytest tests/test_rewards.py ; python rewards.py --bench [--programs 256 --tests 16 --workers N]
"""
from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import fcntl
import functools
import json
import math
import os
import queue
import random
import re
import resource
import select
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

# ----------------------------------------------------------------------------------------------- answers


def _after_think(response, check_think: bool, no_close_think, no_open_think):
    """(text to grade, None) or (None, penalty). check_think=False skips the <think> rule (prompt holds it);
    no_close_think=None grades the whole text when </think> is missing."""
    response = response if isinstance(response, str) else ""
    if check_think and "<think>" not in response:
        return None, no_open_think
    if "</think>" not in response:
        return (response, None) if no_close_think is None else (None, no_close_think)
    return response.rsplit("</think>", 1)[1], None


def _braced(s: str, i: int) -> tuple[str, int] | None:
    """Content of the balanced {...} opening at s[i] and the index after it; None when unbalanced."""
    depth = 0
    for j in range(i, len(s)):
        depth += (s[j] == "{") - (s[j] == "}")
        if depth == 0:
            return s[i + 1:j], j + 1
    return None


def extract_answer(text: str) -> str | None:
    """Last \\boxed{}/\\fbox{} content, else an 'answer is X' / 'Answer: X' phrase, else a one-line short text."""
    if not isinstance(text, str):
        return None
    boxes = list(re.finditer(r"\\(?:boxed|fbox)\s*", text))
    if boxes:
        k = boxes[-1].end()
        bare = re.match(r"[^\s${}]+", text[k:])
        got = _braced(text, k) if text[k:k + 1] == "{" else (bare.group(0), 0) if bare else None
        return got[0].strip() or None if got else None  # a cut-off last box is no answer
    hits = re.findall(r"(?i)\banswer\s*(?:is\s*:?|:)\s*(.+)", text)
    t = hits[-1].strip().strip("*").strip() if hits else text.strip()
    if not hits and ("\n" in t or len(t) > 30):
        return None
    m = re.match(r"\$+([^$]+)\$+", t)
    t = m.group(1) if m else t.strip("$ ").rstrip(".")
    return t.strip() or None


# ----------------------------------------------------------------------------------------------- normaliser

_UNICODE = str.maketrans({"−": "-", "–": "-", "√": "\\sqrt", "π": "\\pi ", "∞": "\\infty ", "≤": "\\le ",
                          "≥": "\\ge ", "×": "\\times ", "·": "\\cdot ", "°": "^\\circ", "，": ",", "\u00a0": " "})
_SUBS = [(re.compile(p), r) for p, r in (
    (r"\\left\.|\\right\.", ""),
    (r"\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle)(?![A-Za-z])", ""),
    (r"\\!", ""),
    (r"(?<!\\)\\[,:; ]|\\q?quad(?![A-Za-z])|~", " "),
    (r"\\[dtc]frac", r"\\frac"), (r"\\[dt]binom", r"\\binom"),
    (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree", ""),
    (r"\\?%", ""), (r"\\?\$", ""),
    (r"\\(?:leq?|leqslant)(?![A-Za-z])", "<="), (r"\\(?:geq?|geqslant)(?![A-Za-z])", ">="),
    (r"\\lt(?![A-Za-z])", "<"), (r"\\gt(?![A-Za-z])", ">"),
    (r"\\varnothing|\\\{\s*\\\}|\\emptyset", r"\\emptyset"),
    (r"_\{(\w+)\}", r"_\1"), (r"^\\approx\s*", ""),
    (r"\s+", " "),
)]
_TEXT = re.compile(r"\\(?:text|textbf|textrm|textit|textnormal|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}")
_TEXT_UNIT = re.compile(r"(?<=[\d}\s])\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}"
                        r"(?:\s*\^\s*\{?\d\}?)?")
_UNIT_TAIL = re.compile(
    r"(?<=[\d})\]])\s*(?:(?:square|sq\.?|cubic)\s*)?(?:units?|cm|mm|km|meters?|metres?|inch(?:es)?|feet|foot|ft|"
    r"yards?|miles?|mph|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|cents?|dollars?|"
    r"degrees?|pounds?|lbs?|ounces?|oz|gallons?|liters?|litres?|grams?|kg|people|students?|ways|points?)"
    r"(?:\s*\^\s*\{?[23]\}?)?$")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:,\s?| )\d{3})+(?:\.\d+)?")
_MIXED = re.compile(r"(-?)(\d+)\s*\\frac\s*\{?(\d+)\}?\s*\{?(\d+)\}?")
_NUM = re.compile(r"-?(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})")


def _untext(s: str) -> str:
    """\\text{...}: a whole-answer text keeps its words, unit words after a value go, anything else is unwrapped."""
    whole = _TEXT.fullmatch(s)
    if whole:
        return whole.group(1).strip()
    s = re.sub(r"\\(?:text|mbox)\s*\{\s*(?:or|and)\s*\}|\s+(?:or|and)\s+", ",", s)
    return _TEXT.sub(lambda m: m.group(1), _TEXT_UNIT.sub("", s))


def _interval(s: str) -> str:
    """'x < 2' -> '(-\\infty,2)', '1 <= x < 3' -> '[1,3)'; anything else unchanged."""
    m = re.fullmatch(r"[A-Za-z]\s*(<=?|>=?)\s*([^<>=]+)", s)
    if m:
        op, x = m.groups()
        if op[0] == "<":
            return f"(-\\infty,{x}{']' if op == '<=' else ')'}"
        return f"{'[' if op == '>=' else '('}{x},\\infty)"
    m = re.fullmatch(r"([^<>=]+?)\s*(<=?)\s*[A-Za-z]\s*(<=?)\s*([^<>=]+)", s)
    if m:
        a, o1, o2, b = m.groups()
        return f"{'[' if o1 == '<=' else '('}{a},{b}{']' if o2 == '<=' else ')'}"
    return s


def _norm(s) -> str:
    """Canonical LaTeX of one answer: cosmetics, units, %, degrees and number formatting removed."""
    s = str(s).translate(_UNICODE).strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = extract_answer(s) or s
    s = _untext(s.strip())
    for pat, rep in _SUBS:
        s = pat.sub(rep, s)
    s = re.sub(r"^[A-Za-z]\s*\\in\s*", "", s.strip().rstrip(".;").strip())
    s = _UNIT_TAIL.sub("", s).strip()
    if _THOUSANDS.fullmatch(s):
        s = re.sub(r"[, ]", "", s)
    m = re.fullmatch(r"(-?)(\d*)\.(\d*)\\overline\{(\d+)\}", s)  # 0.1\overline{6} = 1/6
    if m:
        sign, a, b, c = m.groups()
        v = int(a or 0) + Fraction(int(b or 0), 10 ** len(b)) + Fraction(int(c), (10 ** len(c) - 1) * 10 ** len(b))
        s = f"{sign}\\frac{{{v.numerator}}}{{{v.denominator}}}"
    m = _MIXED.fullmatch(s)
    if m and int(m.group(3)) < int(m.group(4)):
        sign, a, b, c = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        s = f"{sign}\\frac{{{a * c + b}}}{{{c}}}"
    return _interval(s)


def _scaled(s: str, raw: str) -> list[str]:
    """s, plus s/100 when the raw answer had a % sign and s*pi/180 when it had a degree mark."""
    out = [s]
    if _split(s) is None and re.search(r"%|percent", raw):
        out.append(f"({s})/100")
    if _split(s) is None and re.search(r"\\circ|°|degree", raw):
        out.append(f"({s})*\\pi/180")
    return out


# ----------------------------------------------------------------------------------------------- structure

_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)


def _top(s: str, sep: str) -> list[str]:
    """Split s at `sep` where it is outside every (), [] and {} (interval brackets may mismatch)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i].strip())
            i += len(sep)
            start = i
            continue
        i += 1
    return parts + [s[start:].strip()]


def _outer(s: str) -> bool:
    """Whether s[0] and s[-1] are one bracket pair enclosing everything: '(1,2]' yes, '(a)(b)' no."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return False
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def _pm(parts: list[str]) -> list[str]:
    """Expand a \\pm b (or \\mp) into a + b and a - b."""
    out = []
    for p in parts:
        pm = re.search(r"\\(?:pm|mp)", p)
        out += [p[:pm.start()] + "+" + p[pm.end():], p[:pm.start()] + "-" + p[pm.end():]] if pm else [p]
    return out


def _split(s: str):
    """(kind, parts) of a structured answer, None for one value. Kinds: 'set' and 'list' (unordered), a bracket
    pair like '(]' (ordered), 'matrix' (parts are rows of cells)."""
    m = _MATRIX.fullmatch(s)
    if m:
        return "matrix", [_top(r, "&") for r in _top(m.group(2), "\\\\") if r.strip()]
    if len(parts := _top(s, "\\cup")) > 1:
        return "set", parts
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _pm(_top(s[2:-2], ","))
    if _outer(s) and len(parts := _top(s[1:-1], ",")) > 1:
        return s[0] + s[-1], parts
    if len(parts := _top(s, ",")) > 1 or re.search(r"\\(?:pm|mp)", s):
        return "list", _pm(parts)
    return None


def _rows(kind: str, parts: list) -> list[list[str]] | None:
    """A matrix as rows (a column vector becomes one row), a tuple as one row; None for other kinds."""
    if kind == "matrix":
        return [[r[0] for r in parts]] if all(len(r) == 1 for r in parts) else parts
    return [parts] if kind in ("()", "[]") else None


def _matching(xs: list[str], ys: list[str]) -> bool:
    """Every x pairs with a distinct equal y (greedy; answers are short)."""
    free = list(ys)
    for x in xs:
        j = next((j for j, y in enumerate(free) if _eq(x, y)), None)
        if j is None:
            return False
        free.pop(j)
    return not free


def _eq(a: str, b: str) -> bool:
    """Equivalence of normalised answers a (prediction) and b (gold), recursing into the structure."""
    if a.replace(" ", "") == b.replace(" ", ""):
        return bool(a.strip())
    sa, sb = _split(a), _split(b)
    if sa is None and sb is None:
        return _eq_value(a.strip(), b.strip())
    if sa is None or sb is None:
        return False
    (ka, pa), (kb, pb) = sa, sb
    if "matrix" in (ka, kb):
        ra, rb = _rows(ka, pa), _rows(kb, pb)
        return (ra is not None and rb is not None and [len(r) for r in ra] == [len(r) for r in rb]
                and all(_eq(x, y) for r, q in zip(ra, rb) for x, y in zip(r, q)))
    if len(pa) != len(pb):
        return False
    if {ka, kb} & {"set", "list"}:
        return {ka, kb} <= {"set", "list", "()"} and _matching(pa, pb)
    return ka == kb and all(_eq(x, y) for x, y in zip(pa, pb))


_LHS = re.compile(r"[A-Za-z](?:_\w+)?(?:\([A-Za-z]\))?\s*=(?!=)")
_WORD = re.compile(r"[A-Za-z][A-Za-z ]{2,}")


def _letter(s: str) -> str | None:
    """The choice letter of '(C)', 'C', 'C)' or '(c) ...'."""
    m = re.fullmatch(r"\(?([A-E])\)?\.?", s) or re.match(r"\(([A-Ea-e])\)", s)
    return m.group(1).upper() if m else None


def _eq_value(a: str, b: str) -> bool:
    """Two single answers: equations, then 'x = ' prefixes dropped, choice letters, words, values."""
    if "=" in a and "=" in b and _eq_equation(a, b):
        return True
    a, b = _LHS.sub("", a, 1).strip(), _LHS.sub("", b, 1).strip()
    if a.replace(" ", "") == b.replace(" ", ""):
        return bool(a)
    lb = _letter(b)
    if lb or _WORD.fullmatch(b):
        return _letter(a) == lb if lb else a.replace(" ", "").lower() == b.replace(" ", "").lower()
    if "=" in a or "=" in b or max(len(a), len(b)) > 400:
        return False
    x, y, dec = _sym(a), _sym(b), re.compile(r"\.\d")
    return x is not None and y is not None and _expr_eq(x, y, bool(dec.search(a)), bool(dec.search(b)))


# ----------------------------------------------------------------------------------------------- LaTeX -> sympy

_FUNCS = ("sin cos tan cot sec csc asin acos atan acot sinh cosh tanh log exp sqrt root binomial Abs floor ceiling "
          "factorial gcd lcm").split()
_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lamda mu nu xi rho sigma "
          "tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega").split()
_ALIAS = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan", "infty": "oo", "inf": "oo",
          "infinity": "oo", "lambda": "lamda"}
_NAMES = set(_FUNCS) | set(_GREEK) | {"pi", "oo"}
_CMDS = {**{n: n for n in _NAMES}, **_ALIAS, "cdot": "*", "times": "*", "div": "/", "lfloor": "floor(",
         "rfloor": ")", "lceil": "ceiling(", "rceil": ")", "{": "(", "}": ")"}


def _arg(s: str, i: int) -> tuple[str, int]:
    """One TeX argument at s[i:]: a braced group, a command, or one character."""
    while s[i:i + 1] == " ":
        i += 1
    if s[i:i + 1] == "{":
        got = _braced(s, i)
        if got is None:
            raise ValueError("unbalanced braces")
        return got
    m = re.match(r"\\[A-Za-z]+|.", s[i:])
    if m is None:
        raise ValueError("missing argument")
    return m.group(0), i + m.end()


def _tex(s: str) -> str:
    """Normalised LaTeX to Python syntax: \\frac, \\sqrt[n], \\binom, \\log_b, known commands, ^ and braces."""
    out, i = [], 0
    while i < len(s):
        if s[i] != "\\":
            out.append({"{": "(", "}": ")", "[": "(", "]": ")", "^": "**"}.get(s[i], s[i]))
            i += 1
            continue
        m = re.match(r"\\([A-Za-z]+|.)", s[i:])
        name, i = m.group(1), i + m.end()
        if name in ("frac", "binom"):
            a, i = _arg(s, i)
            b, i = _arg(s, i)
            out.append(f"(({_tex(a)})/({_tex(b)}))" if name == "frac" else f"binomial({_tex(a)},{_tex(b)})")
        elif name == "sqrt":
            n = None
            if s[i:i + 1] == "[":
                j = s.index("]", i)
                n, i = s[i + 1:j], j + 1
            a, i = _arg(s, i)
            out.append(f"sqrt({_tex(a)})" if n is None else f"root({_tex(a)},{_tex(n)})")
        elif name == "log" and s[i:i + 1] == "_":
            b, i = _arg(s, i + 1)
            a, i = _arg(s, i)
            out.append(f"log({_tex(a)},{_tex(b)})")
        elif name in _CMDS:
            out.append(f" {_CMDS[name]} ")
        else:
            raise ValueError(f"unknown command \\{name}")
    return "".join(out)


def _ident(m: re.Match) -> str:
    """Whitelisted names stay; x_1 stays one symbol; other letter runs become products of one-letter symbols."""
    t = _ALIAS.get(m.group(0), m.group(0))
    if t in _NAMES or re.fullmatch(r"[A-Za-z]_[A-Za-z0-9]+", t):
        return t
    if "_" in t:
        raise ValueError(f"bad name {t}")
    return " ".join(re.findall(r"[A-Za-z]|\d+", t))


@functools.lru_cache(maxsize=None)
def _sp():
    """sympy, parse_expr, its transformations and the name tables; imported on first use (helpers only)."""
    import sympy
    from sympy.parsing import sympy_parser as sp
    tr = sp.standard_transformations + (sp.implicit_multiplication, sp.implicit_application,
                                        sp.function_exponentiation, sp.rationalize)
    names = {c: sympy.Symbol(c) for c in string.ascii_letters}
    names.update({n: sympy.Symbol(n) for n in _GREEK}, e=sympy.E, i=sympy.I, pi=sympy.pi, oo=sympy.oo)
    names.update({f: getattr(sympy, f) for f in _FUNCS})
    glb = {k: getattr(sympy, k) for k in ("Integer", "Float", "Rational", "Symbol", "Function", "factorial")}
    return sympy, sp.parse_expr, tr, names, glb


def _sym(s: str):
    """sympy expression of one normalised LaTeX value, or None. Only whitelisted names and plain arithmetic
    reach parse_expr (no attribute access, no dunder), so eval inside it sees no user-chosen code."""
    try:
        e = re.sub(r"\|([^|]*)\|", r"Abs(\1)", _tex(s))
        e = re.sub(r"(\d)[eE]([+-]?\d+)(?![\w.])", r"\1*10**(\2)", e)
        e = re.sub(r"[A-Za-z_]\w*", _ident, e)
        if "__" in e or re.search(r"\.(?!\d)", e) or not re.fullmatch(r"[A-Za-z0-9_\s+\-*/().,!]*", e):
            return None
        sympy, parse, tr, names, glb = _sp()
        return sympy.sympify(parse(e, local_dict=dict(names), global_dict=dict(glb), transformations=tr))
    except Exception:
        return None


def _num(e):
    """Complex value of a closed sympy expression at 30 digits, or None."""
    try:
        return complex(e.evalf(30))
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def _points(x, y) -> list[dict]:
    """Four fixed pseudo-random rational points for the free symbols of x and y."""
    sympy, rng = _sp()[0], random.Random(7)
    free = sorted(x.free_symbols | y.free_symbols, key=str)
    return [{s: sympy.Rational(rng.randint(40, 260), 97) for s in free} for _ in range(4)]


def _rat_eq(x: Fraction, y: Fraction, approx: bool) -> bool:
    """Exact, except that a decimal approximation (approx) of a non-terminating gold fraction may be off 1e-4 rel."""
    q = y.denominator
    while q % 2 == 0:
        q //= 2
    while q % 5 == 0:
        q //= 5
    return x == y or (approx and q != 1 and abs(x - y) <= abs(y) / 10**4)


def _expr_eq(x, y, dec_x: bool, dec_y: bool) -> bool:
    """x (prediction) == y (gold): exact; rationals via _rat_eq; numbers at 30 digits within 1e-10 rel, or 1e-4
    when either side was written as a decimal; random points for expressions with symbols; then simplify."""
    sympy = _sp()[0]
    if x == y:
        return True
    if x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) or y.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        return False
    if x.is_Rational and y.is_Rational:
        return _rat_eq(Fraction(int(x.p), int(x.q)), Fraction(int(y.p), int(y.q)), dec_x)
    if not (x.free_symbols | y.free_symbols):
        vx, vy, tol = _num(x), _num(y), 1e-4 if dec_x or dec_y else 1e-10
        return vx is not None and vy is not None and abs(vx - vy) <= tol * max(abs(vx), abs(vy))
    vals = [(_num(x.subs(p)), _num(y.subs(p))) for p in _points(x, y)]
    if all(vx is not None and vy is not None for vx, vy in vals):
        return all(abs(vx - vy) <= 1e-8 * max(abs(vx), abs(vy), 1e-8) for vx, vy in vals)
    return sympy.simplify(x - y) == 0


def _eq_equation(a: str, b: str) -> bool:
    """Two equations are equal when lhs - rhs of one is a nonzero constant times that of the other."""
    sides = [s.split("=") for s in (a, b)]
    if any(len(p) != 2 for p in sides):
        return False
    (l1, r1), (l2, r2) = [[_sym(t) for t in p] for p in sides]
    if None in (l1, r1, l2, r2):
        return False
    d1, d2 = l1 - r1, l2 - r2
    ratios = [(_num(d1.subs(p)), _num(d2.subs(p))) for p in _points(d1, d2)]
    if any(u is None or v is None or abs(v) < 1e-12 for u, v in ratios):
        return False
    q = [u / v for u, v in ratios]
    return abs(q[0]) > 1e-12 and all(abs(r - q[0]) <= 1e-8 * abs(q[0]) for r in q)


def _equal(pred: str, gold: str) -> bool:
    """The full check (sympy included); runs inside a helper process."""
    a, b = _norm(pred), _norm(gold)
    if _eq(a, b):
        return True
    return any(_eq(x, y) for x in _scaled(a, pred) for y in _scaled(b, gold) if (x, y) != (a, b))


# ----------------------------------------------------------------------------------------------- time-bounded checks


class _Helper:
    """A `python rewards.py --serve` process: one JSON [pred, gold] line in, '1' or '0' out."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ready = False

    def _line(self, timeout_s: float) -> bytes:
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout_s)[0]:
            raise TimeoutError("math check timed out")
        line = os.read(fd, 64).strip()
        if not line:
            raise EOFError("math helper died")
        return line

    def ask(self, pred: str, gold: str, timeout_s: float) -> bool:
        self.ready = self.ready or self._line(120.0) == b"ready"  # start-up (sympy import) is not check time
        self.proc.stdin.write(json.dumps([pred, gold]).encode() + b"\n")
        self.proc.stdin.flush()
        return self._line(timeout_s) == b"1"


_IDLE: list[_Helper] = []  # idle helpers of process _IDLE_PID (a forked child must not share their pipes)
_IDLE_PID, _IDLE_LOCK = [os.getpid()], threading.Lock()
_SLOTS = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))  # more helpers than cores would only queue
atexit.register(lambda: [h.proc.kill() for h in _IDLE])


def _ask(pred: str, gold: str, timeout_s: float) -> bool:
    """_equal in a helper; on timeout or any failure the helper is killed and replaced and the answer is False."""
    with _SLOTS:
        with _IDLE_LOCK:
            if _IDLE_PID[0] != os.getpid():
                _IDLE.clear()
                _IDLE_PID[0] = os.getpid()
            h = _IDLE.pop() if _IDLE else _Helper()
        try:
            ok = h.ask(pred, gold, timeout_s)
        except Exception:
            h.proc.kill()
            h.proc.wait()
            h, ok = _Helper(), False  # start the replacement now so that it is warm for the next call
        with _IDLE_LOCK:
            _IDLE.append(h)
        return ok


def _serve() -> None:
    """Helper process loop (see _Helper); memory is capped so a runaway expression cannot take the host down."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    _equal("x+1", "1+x")  # import sympy and warm the parser before announcing readiness
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        signal.alarm(60)  # backstop: a helper whose caller vanished mid-check must not compute forever
        try:
            ok = _equal(*json.loads(line))
        except Exception:
            ok = False
        signal.alarm(0)
        out.write(b"1\n" if ok else b"0\n")
        out.flush()


def math_equal(pred: str, gold: str, timeout_s: float = 1.0) -> bool:
    """Whether two answer strings are mathematically equivalent (module docstring); never raises, never hangs."""
    try:
        if pred is None or gold is None:
            return False
        pred, gold = str(pred), str(gold)
        a, b = _norm(pred), _norm(gold)
        if a.replace(" ", "") == b.replace(" ", ""):
            return bool(a)
        scaled = re.search(r"%|percent|\\circ|°|degree", pred + gold)
        if _NUM.fullmatch(a) and _NUM.fullmatch(b) and not scaled:
            return _rat_eq(Fraction(a), Fraction(b), "." in a)
        if len(pred) + len(gold) > 4000:
            return False
        return _ask(pred, gold, timeout_s)
    except Exception:
        return False


def math_reward(response: str, gold: str, correct: float = 1.0, wrong: float = -1.0, no_close_think=-0.5,
                no_open_think: float = -2.0, check_think: bool = True) -> float:
    """Klear scheme: no <think> -2, no </think> -0.5, else +1 / -1 for the answer after the last </think>."""
    text, penalty = _after_think(response, check_think, no_close_think, no_open_think)
    if text is None:
        return penalty
    pred = extract_answer(text)
    return correct if pred is not None and math_equal(pred, gold) else wrong


# ----------------------------------------------------------------------------------------------- code tests


def extract_code(response: str) -> str | None:
    """The last ```python (or untagged) fenced block after the last </think>."""
    text = response.rsplit("</think>", 1)[-1] if isinstance(response, str) else ""
    blocks = [c for lang, c in re.findall(r"```([^\n`]*)\n(.*?)```", text, re.S)
              if lang.strip().lower() in ("python", "py", "python3", "")]
    return blocks[-1] if blocks and blocks[-1].strip() else None


def _valid(t) -> bool:
    return isinstance(t, dict) and (isinstance(t.get("functional"), str) or (
        isinstance(t.get("input"), str) and isinstance(t.get("output"), str)))


def _text(x) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def _call_test(fn: str, args, out) -> str:
    """An APPS/TACO call-based case (fn_name) as assert code; a one-element list output may be the bare value."""
    args = args if isinstance(args, list) else [args]
    return (f"_f = Solution().{fn} if 'Solution' in globals() else {fn}\n_r = _f(*{args!r})\n"
            f"_r = list(_r) if isinstance(_r, tuple) else _r\n_o = {out!r}\n"
            "assert _r == _o or (isinstance(_o, list) and len(_o) == 1 and _r == _o[0])\n")


def _check_tests(code: str, entry: str, prefix: str = "", split: bool = True) -> list[dict]:
    """`def check(candidate)` test code: one test per top-level assert (LeetCode layout), else one test."""
    call, whole = f"\ncheck({entry})\n", [{"functional": f"{code}\ncheck({entry})\n", "prefix": prefix}]
    try:
        fn = next(n for n in ast.parse(code).body if isinstance(n, ast.FunctionDef) and n.name == "check")
    except (SyntaxError, StopIteration, ValueError):
        return whole
    spans = [(a.lineno - 1, a.end_lineno) for a in fn.body if isinstance(a, ast.Assert)]
    if not split or not spans or any(s1 > t0 for (_, s1), (t0, _) in zip(spans, spans[1:])):
        return whole
    lines, tests = code.splitlines(), []
    for k in range(len(spans)):
        drop = {i for j, (t0, t1) in enumerate(spans) if j != k for i in range(t0, t1)}
        tests.append({"functional": "\n".join(x for i, x in enumerate(lines) if i not in drop) + call,
                      "prefix": prefix})
    return tests


def to_tests(ground_truth) -> list[dict]:
    """run_tests tests from Klear ground truth ({"inputs","outputs"[,"fn_name"]} / {"functional"}, as a JSON
    string or dict), a Klear RL record, a list of tests, or a ../shared/data/code record (TACO, LeetCode,
    HumanEval). Unreadable input gives []."""
    g = ground_truth
    try:
        g = json.loads(g) if isinstance(g, (str, bytes)) else g
        if isinstance(g, list):
            return [t for t in g if _valid(t)]
        if not isinstance(g, dict):
            return []
        if "reward_model" in g or "ground_truth" in g:
            return to_tests((g.get("reward_model") or g).get("ground_truth"))
        if "test_code" in g and "entry_point" in g:
            return _check_tests(g["test_code"], g["entry_point"], g.get("prompt_prefix", ""))
        if "test" in g and "entry_point" in g:
            return _check_tests(g["test"], g["entry_point"], split=False)
        if "functional" in g:
            f = g["functional"]
            return [{"functional": x} for x in (f if isinstance(f, list) else [f]) if isinstance(x, str)]
        if "inputs" in g and "outputs" in g:
            fn = g.get("fn_name")
            if fn and not str(fn).isidentifier():
                return []
            return [{"functional": _call_test(fn, i, o)} if fn else {"input": _text(i), "output": _text(o)}
                    for i, o in zip(g["inputs"], g["outputs"])]
        return to_tests(g["tests"]) if "tests" in g else []
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


# ----------------------------------------------------------------------------------------------- sandbox


@dataclass
class TestResult:
    __test__ = False  # not a pytest class
    passed: bool
    status: str  # pass | wrong answer | runtime error | timeout | memory | output limit | sandbox error | skipped
    time_s: float = 0.0
    detail: str = ""  # why, or the tail of stderr


_PRE = r"""# rewards sandbox
def _main():
    import os, resource, sys, _signal as signal
    c = eval(sys.argv.pop(1))  # our own repr() of ints, strings and lists: no user data
    sys.argv[:] = ["main.py"]
    for k, soft, hard in c["limits"]:
        resource.setrlimit(k, (soft, hard))
    paths = [p for p in sys.path + c["path"] if os.path.isdir(p)]
    if c["uid"]:  # keep import paths reachable through fds opened while still root
        fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in paths]
        os.setgroups([]); os.setgid(c["uid"]); os.setuid(c["uid"])
        new = ["/proc/self/fd/%d" % f for f in fds]
        def moved(x):
            return next((n + x[len(p):] for p, n in zip(paths, new) if x.startswith(p + "/")), x)
        for m in list(sys.modules.values()):  # packages imported at start-up (encodings, ...)
            if isinstance(getattr(m, "__path__", None), list):
                m.__path__[:] = [moved(x) for x in m.__path__]
        paths = new
    sys.path[:] = paths
    if os.getpid() == 1:  # init of a fresh pid namespace: run the program as our child and mirror its end
        signal.signal(signal.SIGALRM, lambda *a: os._exit(137)); signal.alarm(c["alarm"])
        pid = os.fork()
        if pid:
            st = os.waitpid(pid, 0)[1]
            os._exit(128 + os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))
    else:
        signal.alarm(c["alarm"])
    mark = os.read(0, 64) if c["fn"] else b""
    if c["fn"]:
        fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
    out, here, block = os.dup(1), os.getcwd(), set(c["block"])
    wr = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    paths_ev = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.truncate",
                "os.symlink", "os.link", "os.utime", "shutil.rmtree"}
    def inside(p):
        p = os.path.realpath(os.fsdecode(p))
        return p == here or p.startswith(here + "/") or p == os.devnull
    def hook(ev, a):
        if ev in block or ev.startswith("socket."):
            raise PermissionError("sandbox refuses " + ev)
        if ev == "open" and isinstance(a[0], (str, bytes)) and a[2] & wr and not inside(a[0]):
            raise PermissionError("sandbox refuses writing " + os.fsdecode(a[0]))
        if ev in paths_ev and not all(inside(x) for x in a[:2] if isinstance(x, (str, bytes))):
            raise PermissionError("sandbox refuses " + ev)
    sys.addaudithook(hook)
    __builtins__.exit = __builtins__.quit = sys.exit  # normally added by site, which -S skips
    g = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    with open("main.py") as f:
        src = f.read()
    exec(compile(src, "main.py", "exec"), g)
    if c["fn"]:
        os.write(out, b"\n" + mark + b"\n")
_main()
"""
_SPAWN_EVENTS = ["os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "subprocess.Popen"]
_KILL_EVENTS = ["os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlsym"]
_SITE = [p for p in sys.path if p and os.path.isdir(p) and ("site-packages" in p or "dist-packages" in p)]
_UID_BASE, _UID_COUNT = 61000, 1024
_LIVE: set[tuple[int, str]] = set()  # (process group, dir) of running children
_JAIL: dict = {}
_JAIL_LOCK = threading.Lock()


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
    """At exit, kill the children of abandoned reward jobs (reward_many) and remove their folders."""
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


def _same_output(got: str, want: str) -> bool:
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


def _verdict(rc: int, timed_out: bool, out: bytes, err: bytes, test: dict, mark: bytes, cap: int):
    """(passed, status) from how the child ended and what it printed."""
    sig = -rc if rc < 0 else (rc - 128 if rc > 128 and _jail()["prefix"] else 0)
    if timed_out or sig == signal.SIGXCPU:
        return False, "timeout"
    if sig == signal.SIGXFSZ or len(out) > cap or b"File too large" in err:
        return False, "output limit"
    if b"MemoryError" in err:
        return False, "memory"
    if err.startswith((b"nsenter:", b"unshare:")):
        return False, "sandbox error"
    if "functional" in test:
        if rc == 0 and mark in out:
            return True, "pass"
        return False, "wrong answer" if rc == 0 or b"AssertionError" in err else "runtime error"
    if rc != 0:
        return False, "runtime error"
    ok = _same_output(out.decode("utf-8", "replace"), test["output"])
    return ok, "pass" if ok else "wrong answer"


def _argv(jail: dict, uid: int | None, fn: bool, timeout_s: float, memory_mb: int, output_mb: int) -> list[str]:
    """The child's command line: namespace prefix, isolated python, the preamble and its configuration."""
    cpu = math.ceil(timeout_s) + 1
    limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
              (resource.RLIMIT_FSIZE, output_mb << 20, output_mb << 20), (resource.RLIMIT_NOFILE, 64, 64),
              (resource.RLIMIT_CORE, 0, 0)] + ([(resource.RLIMIT_NPROC, 64, 64)] if uid is not None else [])
    block = ([] if jail["prefix"] else _SPAWN_EVENTS) + ([] if jail["root"] else _KILL_EVENTS)
    cfg = {"limits": limits, "uid": uid, "fn": fn, "alarm": cpu + 2, "path": _SITE, "block": block}
    return jail["prefix"] + [sys.executable, "-I", "-S", "-B", "-c", _PRE, repr(cfg)]


def _run_one(code: str, test: dict, timeout_s: float, memory_mb: int, output_mb: int) -> TestResult:
    """One test in one confined child (see the module docstring)."""
    if not _valid(test):
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
        err.seek(max(0, err.seek(0, 2) - 4000))
        stdout, stderr = out.read(cap + 1), err.read()
        passed, status = _verdict(rc, timed_out, stdout, stderr, test, mark, cap)
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


def code_reward(response: str, tests, soft: bool = True, correct: float = 1.0, wrong: float = -1.0,
                no_close_think=-0.5, no_open_think: float = -2.0, check_think: bool = True, **run_opts) -> float:
    """Klear code reward: think-tag rules as math_reward; no code block or no tests -> wrong; soft = wrong +
    (correct - wrong) * pass rate (= 2 * rate - 1), hard = correct only if every sampled test passes."""
    text, penalty = _after_think(response, check_think, no_close_think, no_open_think)
    if text is None:
        return penalty
    code = extract_code(text)
    if code is None or not tests:
        return wrong
    res = run_tests(code, tests, stop_on_fail=not soft, **run_opts)
    rate = sum(r.passed for r in res) / max(1, len(res))
    if not soft:
        return correct if res and rate == 1 else wrong
    return wrong + (correct - wrong) * rate


# ----------------------------------------------------------------------------------------------- batches

_MATH_OPTS = ("correct", "wrong", "no_close_think", "no_open_think", "check_think")
_CODE_OPTS = _MATH_OPTS + ("soft", "timeout_s", "memory_mb", "max_tests", "seed", "stop_on_fail", "output_mb")


def _score(response, task: dict, opts: dict) -> float:
    if task["kind"] == "math":
        return math_reward(response, task["answer"], **{k: v for k, v in opts.items() if k in _MATH_OPTS})
    if task["kind"] == "code":
        return code_reward(response, task["tests"], **opts)
    raise ValueError(f"unknown task kind {task['kind']!r}")


def reward_many(jobs, workers: int = 8, job_timeout_s: float | None = None, **opts) -> list[float]:
    """Rewards of (response, task) jobs on at most `workers` threads (sandboxes and sympy helpers are processes,
    so threads suffice). Never raises: a job that raises or outlives job_timeout_s scores `wrong` and its thread
    is abandoned (it no longer counts against `workers`)."""
    if set(opts) - set(_CODE_OPTS):  # a caller's typo must not silently score every job `wrong`
        raise TypeError(f"reward_many: unknown options {sorted(set(opts) - set(_CODE_OPTS))}")
    jobs, wrong = list(jobs), float(opts.get("wrong", -1.0))
    if job_timeout_s is None:
        job_timeout_s = (opts.get("max_tests") or 16) * (opts.get("timeout_s", 10.0) + 2) + 60
    scores, done, running, nxt = [wrong] * len(jobs), queue.Queue(), {}, 0

    def work(i: int) -> None:
        try:
            done.put((i, float(_score(jobs[i][0], jobs[i][1], opts))))
        except Exception:
            done.put((i, wrong))

    while nxt < len(jobs) or running:
        while nxt < len(jobs) and len(running) < max(1, workers):
            running[nxt] = time.monotonic() + job_timeout_s
            threading.Thread(target=work, args=(nxt,), daemon=True).start()
            nxt += 1
        try:
            i, s = done.get(timeout=max(0.0, min(running.values()) - time.monotonic()))
            if running.pop(i, None) is not None:
                scores[i] = s
        except queue.Empty:
            for i in [i for i, t in running.items() if t <= time.monotonic()]:
                running.pop(i)
    return scores


def _reference(p: dict) -> str | None:
    if isinstance(p.get("solution"), str):
        return p["solution"]
    return p.get("prompt", "") + p["canonical_solution"] if isinstance(p.get("canonical_solution"), str) else None


def filter_problems(problems, min_tests: int = 16, workers: int = 8, **run_opts) -> tuple[list, dict]:
    """Keep problems with >= min_tests tests whose reference solution (when present) passes all of them.
    Report: total, kept, dropped per reason, unverified (kept, no reference solution)."""
    problems = list(problems)
    run_opts.setdefault("max_tests", 0)

    def why(p) -> str | None:
        try:
            tests = to_tests(p)
            if len(tests) < min_tests:
                return "too few tests"
            sol = _reference(p)
            if sol is None:
                return "unverified"
            return None if all(r.passed for r in run_tests(sol, tests, **run_opts)) else "reference fails"
        except Exception:
            return "unreadable"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(why, problems))
    kept = [p for p, r in zip(problems, reasons) if r in (None, "unverified")]
    dropped = Counter(r for r in reasons if r not in (None, "unverified"))
    return kept, {"total": len(problems), "kept": len(kept), "dropped": dict(dropped),
                  "unverified": reasons.count("unverified")}


# ----------------------------------------------------------------------------------------------- benchmark


def _bare(code: str, tests: list[dict], flags: list[str]) -> None:
    """Baseline: subprocess.run([python, *flags, file]) per test, nothing else."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "main.py")
        with open(path, "w") as f:
            f.write(code)
        for t in tests:
            subprocess.run([sys.executable, *flags, path], input=t["input"].encode(), capture_output=True, timeout=60)


def _timed(fn, jobs: list, workers: int) -> tuple[list, float, float]:
    """(results, wall s, CPU s of this process plus its reaped descendants) of fn over jobs on a thread pool."""
    cpu = lambda: sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                      for f in ("ru_utime", "ru_stime"))
    c0, t0 = cpu(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(fn, jobs))
    return out, time.perf_counter() - t0, cpu() - c0


def _bench(a: argparse.Namespace) -> None:
    with open(a.data) as f:
        probs = [json.loads(line) for line in f if line.strip()]
    jobs = [(p["solution"], [p["tests"][j % len(p["tests"])] for j in range(a.tests)])
            for p in (probs[i % len(probs)] for i in range(a.programs))]
    print(sandbox_info(), f"| workers {a.workers} | cpus {os.cpu_count()} | load {os.getloadavg()[0]:.1f}")
    res, wall, cpu = _timed(lambda j: run_tests(j[0], j[1], max_tests=0, timeout_s=a.timeout), jobs, a.workers)
    n, ok = sum(map(len, res)), sum(r.passed for rs in res for r in rs)
    print(f"sandbox | {a.programs} programs x {a.tests} tests | {wall:.1f} s | {a.programs / wall:.2f} programs/s | "
          f"{n / wall:.1f} tests/s | {wall / n * 1e3:.1f} ms wall, {cpu / n * 1e3:.1f} ms cpu per test | "
          f"passed {ok}/{n}", dict(Counter(r.status for rs in res for r in rs if not r.passed)) or "")
    base = jobs[:a.baseline_programs]
    nb = sum(len(j[1]) for j in base)
    for flags in ([], ["-I", "-S"]):
        _, bw, bc = _timed(lambda j, fl=flags: _bare(j[0], j[1], fl), base, a.workers)
        print(f"baseline subprocess.run([python{''.join(' ' + x for x in flags)}, file]) | {nb} tests | "
              f"{bw / nb * 1e3:.1f} ms wall, {bc / nb * 1e3:.1f} ms cpu per test | sandbox/baseline: "
              f"wall {wall / n / (bw / nb):.2f}x, cpu {cpu / n / (bc / nb):.2f}x")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Reward functions; run with --bench for the sandbox benchmark.")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # math helper process
    b = ap.add_argument_group("benchmark")
    b.add_argument("--bench", action="store_true", help="time the sandbox against bare subprocess.run")
    b.add_argument("--programs", type=int, default=256, help="programs (TACO reference solutions, cycled)")
    b.add_argument("--tests", type=int, default=16, help="stdin tests per program (the problem's tests, cycled)")
    b.add_argument("--workers", type=int, default=os.cpu_count(), help="concurrent programs")
    b.add_argument("--baseline-programs", type=int, default=64, help="programs timed for the baselines")
    b.add_argument("--timeout", type=float, default=10.0, help="per-test time limit (s)")
    b.add_argument("--data", default=os.path.join(here, "..", "shared", "data", "code", "taco_stdin.jsonl"))
    args = ap.parse_args()
    if args.serve:
        _serve()
    elif args.bench:
        _bench(args)
    else:
        ap.print_help()
