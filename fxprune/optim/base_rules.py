"""Base update rules (SGD, Adam, AdamW) that produce the search direction.

The pruning optimizers wrap one of these.  A rule offers two entry points that
update its per-parameter state identically:

* ``plain_step``: the complete update, written with the same tensor operations,
  in the same order, as ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (foreach), so
  parameters outside every prunable ZIG follow torch's trajectory.
* ``direction``: for one prunable parameter, the tensor u such that the
  unmodified step would be ``x <- decay * x - lr * u`` (``decay`` from ``decay()``;
  the same formulas, though a fused kernel may round differently).  The search direction of
  the papers is ``d = u + (1 - decay) / lr * x`` (decay != 1 only for AdamW's
  decoupled weight decay); the group math works on (x, u, decay) directly.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

VARIANTS = ("sgd", "adam", "adamw")


class BaseRule(ABC):
    @abstractmethod
    def plain_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], group: dict) -> None:
        ...

    @abstractmethod
    def direction(self, param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        ...

    def decay(self, group: dict) -> float:
        """The factor the plain step multiplies x by (1 except for AdamW)."""
        return 1.0


class SGDRule(BaseRule):
    """torch.optim.SGD: weight decay, momentum, dampening, Nesterov."""

    def plain_step(self, params, grads, states, group):
        if not params:
            return
        momentum, dampening, wd = group["momentum"], group["dampening"], group["weight_decay"]
        if wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if momentum != 0:
            bufs = []
            for grad, state in zip(grads, states):
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                bufs.append(buf)
            if group["nesterov"]:
                if wd == 0:  # never write into .grad
                    grads = [g.clone() for g in grads]
                torch._foreach_add_(grads, bufs, alpha=momentum)
            else:
                grads = bufs
        torch._foreach_add_(params, grads, alpha=-group["lr"])

    def direction(self, param, grad, state, group):
        momentum, dampening, wd = group["momentum"], group["dampening"], group["weight_decay"]
        if wd != 0:
            grad = grad.add(param, alpha=wd)
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            elif dampening == 0:
                # buf <- grad + momentum·buf in one pass over memory instead of torch's two
                # (mul_ then add_); equal up to float rounding.
                torch.add(grad, buf, alpha=momentum, out=buf)
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        return grad


class AdamRule(BaseRule):
    """torch.optim.Adam (L2 weight decay) or AdamW (decoupled weight decay)."""

    def __init__(self, decoupled_weight_decay: bool):
        self.decoupled = decoupled_weight_decay

    @staticmethod
    def init_state(param: torch.Tensor, state: dict) -> None:
        if "step" not in state:
            # Same layout as torch: a float32 CPU scalar step, fp moments like the param.
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def plain_step(self, params, grads, states, group):
        if not params:
            return
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p, s in zip(params, states):
            self.init_state(p, s)
        steps = [s["step"] for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
        if wd != 0:
            if self.decoupled:
                torch._foreach_mul_(params, 1 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        bias_correction1 = [1 - beta1 ** s.item() for s in steps]
        bias_correction2 = [1 - beta2 ** s.item() for s in steps]
        step_size = [(lr / bc) * -1 for bc in bias_correction1]
        bias_correction2_sqrt = [bc**0.5 for bc in bias_correction2]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)

    def direction(self, param, grad, state, group):
        wd, eps = group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        self.init_state(param, state)
        state["step"].add_(1.0)
        step = state["step"].item()
        if wd != 0 and not self.decoupled:
            grad = grad.add(param, alpha=wd)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        # u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), with bc1 folded into the divisor.
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps).mul_(bias_correction1)
        return exp_avg.div(denom)

    def decay(self, group):
        return 1.0 - group["lr"] * group["weight_decay"] if self.decoupled else 1.0


def make_rule(variant: str) -> BaseRule:
    if variant == "sgd":
        return SGDRule()
    if variant in ("adam", "adamw"):
        return AdamRule(decoupled_weight_decay=variant == "adamw")
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def rule_defaults(variant: str, lr: float, momentum: float, dampening: float, weight_decay: float,
                  nesterov: bool, betas: tuple[float, float], eps: float) -> dict[str, Any]:
    """The param-group entries the chosen rule reads (what an LR scheduler may change)."""
    if variant == "sgd":
        return dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    return dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
