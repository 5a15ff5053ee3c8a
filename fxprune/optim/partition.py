"""Choosing the redundant ZIGs G_p: saliency scores, width rule, rank consistency.

Selection never looks at more than the requested count, so the number of groups
the optimizers drive to zero is decided here, once per pruning period.

Width rule (``width_multiple=N``): every layer (``zig_group``) keeps either all of
its channels or a positive multiple of N of them; with N = None (or 1) every layer
keeps at least one channel.  A layer's channels are pruned in "chunks" taken from
its most redundant end: the first chunk has n mod N channels (N when that is 0),
later chunks have N.  Chunks are ranked by their mean redundancy and taken
greedily while they fit in the budget; the result is the largest greedy count
≤ the requested one (never more).  It usually equals it, but not always: a greedy choice of
first chunks can leave a remainder no chunk fits even where another choice would have
hit the count exactly (the optimizers then warn).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def target_count(target: float, num_zigs: int) -> int:
    """⌊target·num_zigs⌋, robust to binary rounding (0.29·100 is 28.999…)."""
    return int(math.floor(round(target * num_zigs, 9)))


def _unit(score: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative score into [0, 1] by its max (all-zero stays zero)."""
    top = score.max() if score.numel() else score.new_tensor(0.0)
    return score / top if top > 0 else torch.zeros_like(score)


def cosine_to_origin(xx, xd, dd) -> torch.Tensor:
    """cos(−d_g, −x_g) = ⟨x,d⟩/(‖x‖‖d‖): 1 when the descent step −d points straight at zero."""
    denom = (xx.sqrt() * dd.sqrt()).clamp_min(torch.finfo(xx.dtype).tiny)
    return torch.where((xx > 0) & (dd > 0), xd / denom, torch.zeros_like(xx))


def dhspg_redundancy(xx, xd, dd, group_sizes) -> torch.Tensor:
    """OTOv2 saliency: mean of the normalised cosine and the normalised inverse magnitude.

    Higher means more redundant.  The cosine term (1 + cos(−d, −x))/2 is in [0, 1]
    and is 1 when the descent step heads straight for zero;
    the magnitude term is 1 − m_g/max m with m_g = ‖x_g‖/√|g|, the group's RMS entry.
    The reference divides by |g|, which makes groups with many slices (a residual
    stream read by every block) look redundant merely for their size: on a small
    ResNet that emptied the stream feeding the classifier.  The RMS compares groups
    of different sizes on the same per-entry scale.
    """
    cos_term = 0.5 * (1.0 + cosine_to_origin(xx, xd, dd))
    magnitude_term = 1.0 - _unit(xx.sqrt() / group_sizes.clamp_min(1).sqrt())
    return 0.5 * (cos_term + magnitude_term)


HESSO_CRITERIA = ("magnitude", "avg_magnitude", "cosine_similarity", "taylor_first_order", "taylor_second_order")


def hesso_importance(xx, xd, dd, group_sizes, weights: dict[str, float]) -> torch.Tensor:
    """HESSO's blended importance (higher = keep).  Each criterion is scaled to [0, 1] by its max.

    Taylor terms use the search direction d in place of the gradient: first order
    |⟨x, d⟩|, second order ½⟨x, d⟩² (empirical-Fisher d dᵀ restricted to the group).
    The cosine criterion is (1 − cos(−d, −x))/2: a descent step that heads for zero
    makes a group less important.
    """
    terms = {
        "magnitude": _unit(xx.sqrt()),
        "avg_magnitude": _unit(xx.sqrt() / group_sizes.clamp_min(1)),
        "cosine_similarity": 0.5 * (1.0 - cosine_to_origin(xx, xd, dd)),
        "taylor_first_order": _unit(xd.abs()),
        "taylor_second_order": _unit(0.5 * xd * xd),
    }
    return sum(weights[k] * terms[k] for k in weights if weights[k] != 0)


def _chunk_plan(layer_sizes: torch.Tensor, already: torch.Tensor, multiple: int):
    """First-chunk size and the most channels each layer may still lose."""
    remainder = torch.remainder(layer_sizes, multiple)
    first = torch.where(already > 0, torch.full_like(remainder, multiple),
                        torch.where(remainder > 0, remainder, torch.full_like(remainder, multiple)))
    keep_min = torch.where(layer_sizes >= multiple, torch.full_like(layer_sizes, multiple), layer_sizes)
    if multiple == 1:
        keep_min = torch.ones_like(layer_sizes).clamp(max=layer_sizes)
    can_lose = (layer_sizes - keep_min - already).clamp_min(0)
    return first, can_lose


def max_prunable(zig_group: torch.Tensor, width_multiple: int | None) -> int:
    """The most ZIGs the width rule allows to prune in total."""
    multiple = width_multiple or 1
    _, layer = torch.unique(zig_group, return_inverse=True)
    sizes = torch.bincount(layer)
    _, can_lose = _chunk_plan(sizes, torch.zeros_like(sizes), multiple)
    if multiple > 1:  # only whole chunks: n mod N, then multiples of N
        rem = torch.remainder(sizes, multiple)
        can_lose = torch.where(can_lose >= rem, rem + (can_lose - rem) // multiple * multiple, torch.zeros_like(can_lose))
    return int(can_lose.sum())


def select_redundant(redundancy: torch.Tensor, zig_group: torch.Tensor, chosen: torch.Tensor,
                     count: int, width_multiple: int | None, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Pick up to ``count`` more ZIGs (bool mask, disjoint from ``chosen`` and ``excluded``), most redundant first.

    Ties are broken by ZIG id (stable sorts), so equal inputs give equal picks on every rank.
    """
    redundancy = redundancy.detach().to("cpu", torch.float64)
    zig_group, chosen = zig_group.cpu(), chosen.cpu()
    num = redundancy.numel()
    picked = torch.zeros(num, dtype=torch.bool)
    if count <= 0:
        return picked
    multiple = width_multiple or 1
    _, layer = torch.unique(zig_group, return_inverse=True)
    num_layers = int(layer.max()) + 1 if num else 0
    sizes = torch.bincount(layer, minlength=num_layers)
    already = torch.bincount(layer[chosen], minlength=num_layers)
    first, can_lose = _chunk_plan(sizes, already, multiple)

    # Free channels ordered by (layer, redundancy descending, id): a layer's pruning order.
    free = (~chosen if excluded is None else ~chosen & ~excluded.cpu()).nonzero().squeeze(1)
    order = free[torch.sort(-redundancy[free], stable=True).indices]
    order = order[torch.sort(layer[order], stable=True).indices]
    lay = layer[order]
    start_of_layer = torch.zeros(num_layers, dtype=torch.int64)
    counts = torch.bincount(lay, minlength=num_layers)
    start_of_layer[1:] = torch.cumsum(counts, 0)[:-1]
    pos = torch.arange(order.numel()) - start_of_layer[lay]  # rank inside its layer

    # Chunk id inside the layer: 0 for the first chunk, then one per N channels.
    f = first[lay]
    chunk = torch.where(pos < f, torch.zeros_like(pos), (pos - f) // multiple + 1)
    chunk_end = torch.where(chunk == 0, f, f + chunk * multiple)  # channels lost once this chunk is taken
    usable = chunk_end <= can_lose[lay]
    if not bool(usable.any()):
        return picked
    order, lay, chunk, chunk_end = order[usable], lay[usable], chunk[usable], chunk_end[usable]

    # One row per (layer, chunk): mean redundancy and size.
    stride = int(chunk.max()) + 1
    keys, inverse = torch.unique(lay * stride + chunk, return_inverse=True)  # layer-major, chunk ascending
    sizes_k = torch.bincount(inverse).to(torch.int64)
    mean_k = torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, inverse, redundancy[order]) / sizes_k
    layer_k, chunk_k = keys // stride, keys % stride

    # Greedy by mean redundancy: the longest prefix that fits, then smaller chunks that still fit.
    rank = torch.sort(-mean_k, stable=True).indices
    fits = torch.cumsum(sizes_k[rank], 0) <= count
    prefix_len = int(fits.sum()) if bool(fits.all()) else int(torch.argmin(fits.to(torch.int8)))
    taken = torch.zeros(keys.numel(), dtype=torch.bool)
    taken[rank[:prefix_len]] = True
    budget = count - int(sizes_k[taken].sum())
    if budget > 0:
        # The budget is now below N, so only untouched layers' short first chunks can fit:
        # a loop over those candidates (at most one per layer), not over channels.
        chunks_taken = torch.bincount(layer_k[taken], minlength=num_layers)
        rest = rank[prefix_len:]
        rest = rest[(sizes_k[rest] <= budget) & (chunk_k[rest] == chunks_taken[layer_k[rest]])]
        for k in rest.tolist():
            if int(sizes_k[k]) <= budget:
                taken[k] = True
                budget -= int(sizes_k[k])
                if budget == 0:
                    break

    # Per layer only the number of chunks matters: take that many from the layer's redundant end,
    # so a floating-point wobble in chunk means can never skip a chunk.
    chunks_per_layer = torch.bincount(layer_k[taken], minlength=num_layers)
    picked[order[chunk < chunks_per_layer[lay]]] = True
    return picked


def broadcast_from_rank0(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Under torch.distributed, every rank adopts rank 0's selection."""
    if not (dist.is_available() and dist.is_initialized()):
        return mask
    buf = mask.to(device=device, dtype=torch.uint8)
    dist.broadcast(buf, src=0)
    return buf.to(device="cpu", dtype=torch.bool)
