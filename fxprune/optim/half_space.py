"""Per-group scalar math of the half-space projection and the adaptive penalty.

Everything here works on per-ZIG vectors of the three reductions
``xx = ‖x_g‖²``, ``xu = ⟨x_g, u_g⟩``, ``uu = ‖u_g‖²`` of the current point x and
the base rule's update u (see base_rules: the plain step is ``decay·x − lr·u``).
The trial point with a group penalty λ_g is

    x̂_g = x_g − lr·(d_g + λ_g x_g/‖x_g‖) = f_g·decay·x_g − lr·u_g,
    f_g = 1 − lr·λ_g / (decay·‖x_g‖),

so ``⟨x̂_g, x_g⟩`` and the update itself follow from (xx, xu, uu) without
touching the tensors again.
"""
from __future__ import annotations

import torch


def direction_stats(xx: torch.Tensor, xu: torch.Tensor, uu: torch.Tensor, lr: float, decay: float):
    """⟨x, d⟩ and ‖d‖² for d = u + c·x, c = (1 − decay)/lr (c = 0 unless AdamW decay)."""
    c = (1.0 - decay) / lr if lr > 0 else 0.0
    xd = xu + c * xx
    dd = uu + 2 * c * xu + c * c * xx
    return xd, dd


def adaptive_lambda(xx, xd, dd, lmbda: float, amplify: float, hat_coeff: float) -> torch.Tensor:
    """DHSPG's group-adaptive penalty λ_g.

    Where ⟨x_g, d_g⟩ < 0 the descent step grows the group, so λ_g must exceed
    λ_lb = −⟨x,d⟩/‖x‖ to shrink it; staying below λ_ub = −‖d‖²‖x‖/⟨x,d⟩ keeps the
    penalised direction a descent direction for f.  Reference rule:
    clip(amplify·λ_lb, λ, hat·λ), midpoint of [λ_lb, λ_ub] if that is ≥ λ_ub.
    Elsewhere λ_g = λ.
    """
    norm = xx.sqrt()
    growing = (xd < 0) & (norm > 0)
    safe_xd = torch.where(growing, xd, -torch.ones_like(xd))
    lam_lb = -safe_xd / norm.clamp_min(torch.finfo(norm.dtype).tiny)
    lam_ub = -dd * norm / safe_xd
    lam = (amplify * lam_lb).clamp(min=lmbda, max=hat_coeff * lmbda)
    lam = torch.where(lam >= lam_ub, 0.5 * (lam_lb + lam_ub), lam)
    return torch.where(growing, lam, torch.full_like(xx, lmbda))


def penalty_factor(xx: torch.Tensor, lam: torch.Tensor, lr: float, decay: float) -> torch.Tensor:
    """f_g such that the penalised trial point is f_g·decay·x_g − lr·u_g (1 where x_g = 0)."""
    norm = xx.sqrt()
    if decay == 0:  # AdamW with lr·weight_decay = 1 wipes x: the trial point is −lr·u whatever λ is
        return torch.ones_like(xx)
    factor = 1.0 - lr * lam / (decay * norm.clamp_min(torch.finfo(norm.dtype).tiny))
    return torch.where(norm > 0, factor, torch.ones_like(factor))


def trial_inner(xx, xu, factor, lr: float, decay: float) -> torch.Tensor:
    """⟨x̂_g, x_g⟩ for x̂_g = factor·decay·x_g − lr·u_g."""
    return factor * decay * xx - lr * xu


def leaves_half_space(xx, xu, factor, lr: float, decay: float, epsilon: float) -> torch.Tensor:
    """True where the trial point leaves {y: ⟨y, x_g⟩ ≥ ε‖x_g‖²}: project x_g to zero.

    Groups that are already zero are never reported (they are handled as held zero).
    """
    return (trial_inner(xx, xu, factor, lr, decay) < epsilon * xx) & (xx > 0)


def half_space_step(x: torch.Tensor, d: torch.Tensor, lam: float, lr: float, epsilon: float) -> torch.Tensor:
    """Reference form for ONE group (flat x and d): the definition, used to test the batched math."""
    norm = x.norm()
    if norm == 0:
        return torch.zeros_like(x)
    trial = x - lr * (d + lam * x / norm)
    if torch.dot(trial, x) < epsilon * norm**2:
        return torch.zeros_like(x)
    return trial
