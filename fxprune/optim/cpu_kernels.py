"""Numba kernels for the group step of the SGD and Adam rules on the CPU: two passes per tensor.

Eager, a step that needs the per-row sums runs the momentum update, then ‖x‖², ⟨x,u⟩
and ‖u‖² as separate kernels, then ``x·scale`` and ``− lr·keep·u``: each a trip through
memory, and a single CPU core streams memory at only about 20 GB/s.  Here

* ``sgd_direction_row_sums`` walks each row once: it forms u (weight decay, momentum,
  dampening, Nesterov as in ``base_rules.SGDRule.direction``), stores the momentum
  buffer and accumulates the three row sums in float64 while the values are in
  registers;
* ``sgd_apply_rows`` forms u again from what is stored and writes
  ``x <- scale·x − lr·keep·u`` in the same pass.

That is as many trips through memory as ``torch.optim.SGD(foreach=True)`` makes.
``adam_direction_row_sums`` and ``adam_apply_rows`` do the same for Adam/AdamW
(``base_rules.AdamRule.direction``): pass 1 stores both moments, pass 2 re-forms
u = m̂/(√v̂ + eps) from them.
Sums are added in another order than torch's (and in float64), and the compiler may
fuse a multiply and an add, so results equal the eager path up to float rounding.

Only ``reassoc`` and ``contract`` of LLVM's fast-math flags are on: reassociation lets
the row sums vectorise; NaN and inf keep their IEEE meaning.  ``error_model="numpy"``
makes a division by zero give inf or NaN, as in torch, instead of a Python exception;
the check that exception needs would also keep Adam's loops from vectorising (7× slower).
"""
from __future__ import annotations

import numba
import numpy as np

_FLAGS = {"reassoc", "contract"}


@numba.njit(fastmath=_FLAGS, inline="always")
def _with_l2(gv, xv, weight_decay):
    """The gradient with an L2 term folded in (SGD's weight decay, Adam's), as the eager rules do."""
    return gv + weight_decay * xv if weight_decay != 0.0 else gv


@numba.njit(fastmath=_FLAGS, inline="always")
def _accumulate(xx, xu, uu, xv, u):
    """One element's share of ‖x‖², ⟨x,u⟩, ‖u‖², added in float64."""
    xf = np.float64(xv)
    uf = np.float64(u)
    return xx + xf * xf, xu + xf * uf, uu + uf * uf


@numba.njit(inline="always")
def _store_sums(out, want, r, xx, xu, uu):
    if want[r]:
        out[0, r] = xx
        out[1, r] = xu
        out[2, r] = uu


@numba.njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
def sgd_direction_row_sums(x, g, buf, want, out, weight_decay, momentum, undamped, has_momentum, nesterov):
    """Rows of 2-D x, g, buf (buf unused without momentum): update buf; where want[r], out[:, r] = sums.

    out is [3, rows]: ‖x_r‖², ⟨x_r, u_r⟩, ‖u_r‖².  ``undamped`` is 1 − dampening.  The
    hyper-parameters come as scalars of x's dtype (see ``as_dtype``) so that float32
    tensors are updated in float32 arithmetic; ``has_momentum`` is decided before that
    cast (a momentum of 1e-50 is 0 in float32, yet the buffer is still written, as eagerly).
    """
    rows, width = x.shape
    for r in range(rows):
        xx = xu = uu = 0.0
        for k in range(width):
            xv = x[r, k]
            d = _with_l2(g[r, k], xv, weight_decay)
            if has_momentum:
                if undamped == 1.0:
                    b = d + momentum * buf[r, k]
                else:
                    b = momentum * buf[r, k] + undamped * d
                buf[r, k] = b
                u = d + momentum * b if nesterov else b
            else:
                u = d
            xx, xu, uu = _accumulate(xx, xu, uu, xv, u)
        _store_sums(out, want, r, xx, xu, uu)


@numba.njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
def sgd_apply_rows(x, g, buf, scale, keep, neg_lr, weight_decay, momentum, has_momentum, nesterov):
    """x[r] <- scale[r]·x[r] − lr·keep[r]·u[r], with u re-formed from g, the stored buf and the old x."""
    rows, width = x.shape
    for r in range(rows):
        s = scale[r]
        c = neg_lr * keep[r]
        for k in range(width):
            xv = x[r, k]
            if has_momentum and not nesterov:
                u = buf[r, k]
            else:
                u = _with_l2(g[r, k], xv, weight_decay)
                if nesterov:
                    u = u + momentum * buf[r, k]
            x[r, k] = xv * s + c * u


@numba.njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
def adam_direction_row_sums(x, g, m, v, want, out, weight_decay, one_minus_beta1, beta2, one_minus_beta2,
                            bias_correction2_sqrt, eps, bias_correction1):
    """Adam's moments of 2-D x, g (weight_decay > 0: L2, added to g), then sums as in sgd_direction_row_sums.

    u = (m / bc1) / (√v / √bc2 + eps), formed as m / ((√v / √bc2 + eps)·bc1) like the eager rule.
    """
    rows, width = x.shape
    for r in range(rows):
        xx = xu = uu = 0.0
        for k in range(width):
            xv = x[r, k]
            d = _with_l2(g[r, k], xv, weight_decay)
            mk = m[r, k] + one_minus_beta1 * (d - m[r, k])
            vk = beta2 * v[r, k] + one_minus_beta2 * d * d
            m[r, k] = mk
            v[r, k] = vk
            u = mk / ((np.sqrt(vk) / bias_correction2_sqrt + eps) * bias_correction1)
            xx, xu, uu = _accumulate(xx, xu, uu, xv, u)
        _store_sums(out, want, r, xx, xu, uu)


@numba.njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
def adam_apply_rows(x, m, v, scale, keep, neg_lr, bias_correction2_sqrt, eps, bias_correction1):
    """x[r] <- scale[r]·x[r] − lr·keep[r]·u[r], with u re-formed from the stored moments."""
    rows, width = x.shape
    for r in range(rows):
        s = scale[r]
        c = neg_lr * keep[r]
        for k in range(width):
            u = m[r, k] / ((np.sqrt(v[r, k]) / bias_correction2_sqrt + eps) * bias_correction1)
            x[r, k] = x[r, k] * s + c * u


def as_dtype(values, dtype: np.dtype) -> tuple:
    """Python floats as NumPy scalars of ``dtype``: the kernels' arithmetic then stays in that dtype."""
    return tuple(dtype.type(v) for v in values)
