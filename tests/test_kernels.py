"""kernels.py: fused log-probs / entropy against the naive reference (values and gradients), Triton kernels under
TRITON_INTERPRET=1 (a subprocess re-runs the comparison tests of this file), bf16, bad input, saved memory."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import IGNORE_INDEX, naive_token_logprobs, token_logprobs

N, H, V = 37, 24, 101  # multiples of no block / chunk size
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# in the interpreter subprocess the comparison tests exercise Triton; in the normal run, the torch backend (and the
# compiled Triton kernels too when a GPU is present)
FUSED = [("triton", torch.float32)] if INTERPRET else [("torch", torch.float64), ("torch", torch.float32)]
FUSED += [("triton", torch.float32)] if torch.cuda.is_available() and not INTERPRET else []
DEVICE = {"torch": "cpu", "triton": "cpu" if INTERPRET else "cuda"}
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Several chunks at N = 37 (29 unignored rows): 8 rows per torch chunk, 16 per Triton one."""
    monkeypatch.setattr(kernels, "TORCH_CHUNK_ELEMS", 8 * V)
    monkeypatch.setattr(kernels, "TRITON_CHUNK_BYTES", 16 * V * 2)


def _inputs(dtype, n=N, h=H, v=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5  # logits of a few units: peaked softmax
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = IGNORE_INDEX
    a, b = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    return hidden.to(dtype), weight.to(dtype), targets, a, b


def _objective(fn, hidden, weight, targets, temperature, mode, a, b):
    """Values and (hidden, weight) grads of sum(a logp) ('logp'), sum(b entropy) ('entropy') or both."""
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    targets, a, b = targets.to(h.device), a.to(h.device), b.to(h.device)
    if mode == "logp":  # return_entropy=False path
        logp, ent = fn(h, w, targets, temperature, False), None
        loss = (a.to(logp.dtype) * logp).sum()
    else:
        logp, ent = fn(h, w, targets, temperature, True)
        loss = (b.to(ent.dtype) * ent).sum() + (0 if mode == "entropy" else (a.to(logp.dtype) * logp).sum())
    loss.backward()
    return [t.detach().cpu() for t in (logp, ent, h.grad, w.grad) if t is not None]


def _close(got, want, tol):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = w.abs().max().clamp(min=1.0)
        assert (g.double() - w.double()).abs().max() <= tol * scale, (g, w)


def _fused(backend):
    return lambda h, w, t, temp, ent: token_logprobs(h, w, t, temp, ent, backend=backend)


@pytest.mark.parametrize("mode", ["logp", "entropy", "both"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("backend,dtype", FUSED)
def test_matches_naive(backend, dtype, temperature, mode):
    hidden, weight, targets, a, b = _inputs(dtype)
    hidden, weight = hidden.to(DEVICE[backend]), weight.to(DEVICE[backend])
    want = _objective(naive_token_logprobs, hidden, weight, targets, temperature, mode, a, b)
    got = _objective(_fused(backend), hidden, weight, targets, temperature, mode, a, b)
    _close(got, want, TOL[dtype])
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert want[-2].abs().sum() > 0  # the gradient is not trivially zero


@pytest.mark.parametrize("backend", sorted({backend for backend, _ in FUSED}))
def test_bf16_close_to_fp32(backend):
    hidden, weight, targets, a, b = _inputs(torch.bfloat16)
    hidden, weight = hidden.to(DEVICE[backend]), weight.to(DEVICE[backend])
    want = _objective(naive_token_logprobs, hidden.float(), weight.float(), targets, 0.6, "both", a, b)
    got = _objective(_fused(backend), hidden, weight, targets, 0.6, "both", a, b)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.bfloat16
    _close(got[:2], want[:2], 1e-3)  # values: fp32 accumulation of exact bf16 products
    _close(got[2:], want[2:], 2e-2)  # grads: rounded to bf16 (and dlogits stored in bf16 on Triton)


def test_ignored_rows_zero_value_and_grad():
    hidden, weight, targets, _, _ = _inputs(torch.float32)
    h = hidden.clone().requires_grad_()
    logp, ent = token_logprobs(h, weight, targets, return_entropy=True, backend="torch")
    (logp.sum() + ent.sum()).backward()
    ignored = targets == IGNORE_INDEX
    assert ignored.any() and (logp[ignored] == 0).all() and (ent[ignored] == 0).all()
    assert (h.grad[ignored] == 0).all() and (h.grad[~ignored].abs().sum(1) > 0).all()
    assert (logp[~ignored] < 0).all() and (ent[~ignored] > 0).all()


def test_all_ignored_still_differentiable():
    hidden, weight, targets, _, _ = _inputs(torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp = token_logprobs(h, w, torch.full_like(targets, IGNORE_INDEX), backend="torch")
    logp.sum().backward()
    assert (logp == 0).all() and (h.grad == 0).all() and (w.grad == 0).all()


def test_auto_is_torch_on_cpu():
    hidden, weight, targets, _, _ = _inputs(torch.float32)
    assert torch.equal(token_logprobs(hidden, weight, targets), token_logprobs(hidden, weight, targets,
                                                                                 backend="torch"))


def _bad(**change):
    hidden, weight, targets, _, _ = _inputs(torch.float32)
    args = dict(hidden=hidden, weight=weight, targets=targets, temperature=1.0, backend="torch") | change
    return lambda: token_logprobs(**args)


@pytest.mark.parametrize("call,match", [
    (_bad(hidden=torch.zeros(2, N, H)), r"hidden \(N, H\)"),
    (_bad(weight=torch.zeros(V * H)), r"weight \(V, H\)"),
    (_bad(weight=torch.zeros(V, H + 1)), r"weight \(V, H\)"),
    (_bad(targets=torch.zeros(N + 1, dtype=torch.long)), r"targets: \(N,\)"),
    (_bad(targets=torch.zeros(N)), "torch.long"),
    (_bad(weight=torch.zeros(V, H, dtype=torch.float64)), "one float dtype"),
    (_bad(temperature=0.0), "temperature must be > 0"),
    (_bad(backend="cuda"), "unknown backend"),
    (_bad(targets=torch.full((N,), V)), r"targets outside \[0, 101\)"),
])
def test_bad_input(call, match):  # internal API: assertions
    with pytest.raises(AssertionError, match=match):
        call()


def _largest_saved(backend, n=64, h=16, v=2000) -> int:
    hidden, weight, targets, _, _ = _inputs(torch.float32, n, h, v)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        logp, ent = token_logprobs(hidden.requires_grad_(), weight.requires_grad_(), targets,
                                   return_entropy=True, backend=backend)
    return max(sizes)


def test_graph_saves_no_logits():
    n, h, v = 64, 16, 2000
    assert _largest_saved("naive") >= n * v  # the check can fail: the reference does save (N, V)
    assert _largest_saved("torch") <= v * h  # fused: weight (V, H) is the largest; then O(N) stats


def test_triton_interpreted():
    pytest.importorskip("triton", reason="triton is not installed")
    if INTERPRET:
        pytest.skip("already inside the interpreter run")
    env = dict(os.environ, TRITON_INTERPRET="1")  # must be set before triton is imported: a fresh process
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
           __file__, "-k", "matches_naive or bf16"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "7 passed" in out.stdout, out.stdout[-3000:]
    assert kernels.triton is not None
