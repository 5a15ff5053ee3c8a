"""Helpers shared by the rule tests: prune at random, construct with verification, compare."""
import torch

import fxprune


def prune(model, example_inputs, fraction=0.5, seed=0):
    """Trace, zero ``fraction`` of the prunable ZIGs, construct with ``verify=True``: (space, compact)."""
    space = fxprune.trace(model, example_inputs)
    space.zero_random_groups(fraction, seed=seed)
    return space, space.construct_subnet(verify=True)


def assert_same(small, model, *inputs):
    """The compact and the (zeroed) dense model agree on ``inputs`` (other shapes than the traced ones)."""
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


def group(space, name):
    """The group named ``name`` (its first producer slice, e.g. ``'fc1.weight[dim 0]'``)."""
    return next(g for g in space.groups if g.name == name)


def perturbed(model, scale):
    """``model`` in eval mode with every parameter moved by ``scale``·randn: norms start at scale 1 and
    shift 0, biases at 0, and a test should not depend on such special values."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()
