# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Non-negative solvers of F-SEG: NNLS (block principal pivoting, or coordinate descent) and NMF on torch tensors."""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch

logger = logging.getLogger(__name__)

__all__ = ["nnls", "nmf"]


# ----------------------------------------------------------------------------------------------
# factorisation (torch, batched over pixels)
# ----------------------------------------------------------------------------------------------
def _cd_sweep(WT: torch.Tensor, G: torch.Tensor, negBT: torch.Tensor, GR: torch.Tensor) -> torch.Tensor:
    """One coordinate-descent sweep for min_{W>=0} ||X - W H||^2, all rows of W at once, components 0..k-1.

    Transposed storage so that every step touches contiguous rows: ``WT`` = W^T (k, P) is updated in place,
    ``G`` = H H^T (k, k), ``negBT`` = -(X H^T)^T (k, P), ``GR`` (k, P) a work buffer that receives the gradients.
    Returns the summed projected-gradient violation, exactly as scikit-learn's ``_update_cdnmf_fast``
    (``shuffle=False``): the gradient of coordinate t is taken after coordinates < t were updated.
    """
    w_old = WT.clone()
    WTt = WT.T
    cols, diag = G.unbind(1), G.diagonal().tolist()
    for t, (w, g, nb) in enumerate(zip(WT.unbind(0), GR.unbind(0), negBT.unbind(0))):
        torch.addmv(nb, WTt, cols[t], out=g)  # grad_t = W @ G[:, t] - B[:, t]
        if diag[t] != 0:
            w.sub_(g, alpha=1.0 / diag[t]).clamp_(min=0)
    return torch.where(w_old == 0, GR.clamp(max=0), GR).abs().sum()


def _cd_solve(WT: torch.Tensor, G: torch.Tensor, negBT: torch.Tensor, tol: float, max_iter: int) -> int:
    """Sweeps of :func:`_cd_sweep` until violation <= tol * first violation (scikit-learn's rule); -> sweeps."""
    GR = torch.empty_like(WT)
    v0 = None
    for it in range(1, max_iter + 1):
        v = float(_cd_sweep(WT, G, negBT, GR))
        if v0 is None:
            v0 = v
        if v0 == 0 or v / v0 <= tol:
            return it
    return max_iter


def _passive_solve(G: torch.Tensor, B: torch.Tensor, Fs: torch.Tensor, ridge: float, group: int = 256) -> torch.Tensor:
    """Rows of X (r, k) with X_F = G_FF^{-1} b_F on each row's passive set F (bool (r, k)) and 0 elsewhere.

    Rows are sorted by passive-set size and solved in groups of ``group``: each group's passive indices are
    gathered into compact (g, s, s) systems (s = the group's largest set, padded with identity rows) and solved by
    batched Cholesky (least squares where a system is numerically singular).
    """
    r, k = B.shape
    X = torch.zeros_like(B)
    size = Fs.sum(1)
    order = torch.argsort(size)
    for a in range(0, r, group):
        rows = order[a:a + group]
        sz = size[rows]
        s = int(sz.max())
        if s == 0:
            continue
        idx = torch.argsort((~Fs[rows]).to(torch.int8), dim=1, stable=True)[:, :s]  # passive indices first
        vm = (torch.arange(s, device=B.device)[None] < sz[:, None]).to(G.dtype)
        A = G[idx[:, :, None], idx[:, None, :]] * (vm[:, :, None] * vm[:, None, :])
        A = A + torch.diag_embed(1.0 - vm + ridge)
        rhs = (B[rows].gather(1, idx) * vm)[..., None]
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            x = torch.linalg.lstsq(A, rhs).solution[..., 0]
        else:
            x = torch.cholesky_solve(rhs, L)[..., 0]
        X[rows] = torch.zeros_like(B[rows]).scatter_(1, idx, x * vm)
    return X


def _bpp_block(G: torch.Tensor, B: torch.Tensor, max_iter: int, F0: Optional[torch.Tensor] = None) -> tuple:
    """Exact NNLS for many right-hand sides by block principal pivoting (Kim & Park, SIAM J. Sci. Comput. 2011).

    Solves min_{x >= 0} x^T G x / 2 - b^T x for every row b of ``B`` (p, k) with G = H H^T (k, k), all rows at
    once: each round re-solves only the infeasible rows (:func:`_passive_solve`). ``F0`` (p, k) bool: initial
    passive sets (e.g. the support of a few coordinate-descent sweeps); the result does not depend on it.
    Returns (X (p, k), number of rows not converged within ``max_iter`` rounds).
    """
    p, k = B.shape
    scale = float(G.diagonal().max()) if k else 1.0
    ridge = 1e-12 * scale
    eps = 1e-12 * max(1.0, float(B.abs().max()) if B.numel() else 1.0)
    if F0 is None:
        Fs = torch.zeros((p, k), dtype=torch.bool, device=B.device)
        X = torch.zeros_like(B)
    else:
        Fs = F0.clone()
        X = _passive_solve(G, B, Fs, ridge)
    Y = (X @ G - B).masked_fill_(Fs, 0.0)
    alpha = torch.full((p,), 3, dtype=torch.long, device=B.device)
    beta = torch.full((p,), k + 1, dtype=torch.long, device=B.device)
    for _ in range(max_iter):
        V = (Fs & (X < -eps)) | (~Fs & (Y < -eps))
        nv = V.sum(1)
        rows = torch.nonzero(nv > 0).flatten()
        if rows.numel() == 0:
            return X, 0
        v, n, a, b_ = V[rows], nv[rows], alpha[rows], beta[rows]
        full = n < b_
        b_ = torch.where(full, n, b_)
        a = torch.where(full, torch.full_like(a, 3), a)
        keep = ~full & (a >= 1)
        a = torch.where(keep, a - 1, a)
        backup = ~full & ~keep
        flip = v.clone()
        if backup.any():  # flip only the largest infeasible index
            last = k - 1 - torch.flip(v[backup].long(), dims=[1]).argmax(1)
            fb = torch.zeros_like(v[backup])
            fb[torch.arange(fb.shape[0], device=fb.device), last] = True
            flip[backup] = fb
        alpha[rows], beta[rows] = a, b_
        F_r = Fs[rows] ^ flip
        Fs[rows] = F_r
        x = _passive_solve(G, B[rows], F_r, ridge)
        y = (x @ G - B[rows]).masked_fill_(F_r, 0.0)
        X[rows], Y[rows] = x, y
    V = (Fs & (X < -eps)) | (~Fs & (Y < -eps))
    return X.clamp(min=0), int(V.any(1).sum())


def nnls(X: torch.Tensor, H: torch.Tensor, tol: float = 1e-4, max_iter: int = 10000, method: str = "bpp",
         chunk: int = 4096, warm_sweeps: int = 10) -> torch.Tensor:
    """Per-row non-negative least squares ``W = argmin_{W >= 0} ||X - W H||_F^2`` (F-SEG variant B), in torch on
    X's device, batched over rows.

    ``method="bpp"`` (default): exact solution by block principal pivoting (:func:`_bpp_block`, float64, rows in
    blocks of ``chunk``, started from the support of ``warm_sweeps`` coordinate-descent sweeps; ``max_iter``
    caps the pivoting rounds at min(max_iter, 50 + 5k)).
    ``method="cd"``: the algorithm and stopping rule of scikit-learn's ``non_negative_factorization(X, H=H,
    update_H=False, solver='cd', tol, max_iter)``: W = 0 start, cyclic coordinate descent, stop when the summed
    projected-gradient violation is <= ``tol`` times the first sweep's (same iterates, vectorised over rows).
    Both give scikit-learn's labels on converged problems (tests/fseg/test_solvers.py); bpp is the fast one.

    Args:
        X: (P, C) >= 0 pixel features.  H: (k, C) >= 0 (negatives are clipped, not in place).
    Returns:
        W (P, k) >= 0, X's dtype, on X's device.
    """
    if method == "cd":
        Hc = H.to(X.device, X.dtype).clamp(min=0)
        negBT = -(Hc @ X.T)  # (k, P)
        WT = torch.zeros_like(negBT)
        _cd_solve(WT, Hc @ Hc.T, negBT, tol, max_iter)
        return WT.T
    if method != "bpp":
        raise ValueError(f"unknown NNLS method {method!r}; use 'bpp' or 'cd'")
    Hc = H.to(X.device, torch.float64).clamp(min=0)
    G = Hc @ Hc.T
    k = Hc.shape[0]
    rounds = min(int(max_iter), 50 + 5 * k)
    out, bad = [], 0
    for s in range(0, X.shape[0], chunk):
        B = X[s:s + chunk].to(torch.float64) @ Hc.T
        F0 = None
        if warm_sweeps > 0:  # a few CD sweeps give a good first passive set (fewer, smaller pivoting rounds)
            WT = torch.zeros_like(B.T)
            _cd_solve(WT, G, -B.T.contiguous(), 0.0, warm_sweeps)
            F0 = WT.T > 0
        Wb, nb = _bpp_block(G, B, rounds, F0)
        out.append(Wb)
        bad += nb
    if bad:
        logger.warning(f"NNLS: {bad} of {X.shape[0]} pixels did not converge in {rounds} pivoting rounds")
    return torch.cat(out).to(X.dtype) if out else X.new_zeros((0, k))


def nmf(X: torch.Tensor, n_components: int, max_iter: int = 200, tol: float = 1e-4, seed: int = 0):
    """NMF ``X ~ W H`` (Frobenius) by alternating coordinate descent (HALS), as scikit-learn's ``NMF(solver='cd',
    init='random')``: random init |N(0,1)| * sqrt(mean(X)/n), same violation-based stop; on X's device.

    Args:
        X: (P, C) >= 0.  n_components: n (clipped to min(P, C)).
    Returns:
        W (P, n) >= 0 and H (n, C) >= 0.
    """
    P, C = X.shape
    n = max(1, min(int(n_components), P, C))
    g = torch.Generator().manual_seed(int(seed))
    avg = math.sqrt(max(float(X.mean()), 0.0) / n)
    WT = (torch.randn(P, n, generator=g).abs() * avg).T.contiguous().to(X.device, X.dtype)  # (n, P)
    H = (torch.randn(n, C, generator=g).abs() * avg).to(X.device, X.dtype)  # (n, C)
    GW, GH = torch.empty_like(WT), torch.empty_like(H)
    v0 = None
    for _ in range(max_iter):
        v = _cd_sweep(WT, H @ H.T, -(H @ X.T), GW)
        v = v + _cd_sweep(H, WT @ WT.T, -(WT @ X), GH)
        v = float(v)
        if v0 is None:
            v0 = v
        if v0 == 0 or v / v0 <= tol:
            break
    return WT.T.contiguous(), H
