"""What FX does not show: aliased storage, augmented assignments, module hooks, parametrizations.

Each pattern once gave a compact model that silently differed from the dense one (or a
bare traceback).  Each test zeroes ZIGs, constructs WITHOUT verify=True and compares the
outputs itself, so a wrong model fails here even if verification were broken.
"""
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import fxprune
from passes.aliasing import AUGMENTED_KEY


def _compact_and_compare(model, x):
    """(space, max |dense - compact|) after zeroing half the ZIGs; the model is perturbed in eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.eval()
    space = fxprune.trace(model, x)
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet()
    with torch.no_grad():
        fresh = torch.randn_like(x)
        return space, max((model(v) - small(v)).abs().max().item() for v in (x, fresh))


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        self.identity = nn.Identity()
        self.drop = nn.Dropout(0.3)


class WriteThroughCast(TwoConvs):  # .float() on a float tensor returns the tensor itself
    def forward(self, x):
        h = F.relu(self.c1(x))
        y = h.float()
        y.add_(1.0)
        return self.c2(h)


class WriteThroughDropout(TwoConvs):  # eval-mode dropout returns its input itself
    def forward(self, x):
        h = F.relu(self.c1(x))
        self.drop(h).clamp_(min=0.5)
        return self.c2(h)


class AugmentedThroughIdentity(TwoConvs):  # `y += 1` writes into h's storage; FX records `y + 1`
    def forward(self, x):
        h = F.relu(self.c1(x))
        y = self.identity(h)
        y += 1.0
        return self.c2(h)


class ViewThenWriteBase(TwoConvs):  # the view was taken before the write and read after it
    def forward(self, x):
        h = F.relu(self.c1(x))
        v = h.view(h.shape[0], 8, -1).view(h.shape)
        h.add_(1.0)
        return self.c2(v)


@pytest.mark.parametrize("cls", [WriteThroughCast, WriteThroughDropout, AugmentedThroughIdentity, ViewThenWriteBase])
def test_in_place_write_into_an_aliased_tensor_is_followed_or_blocked(cls):
    space, diff = _compact_and_compare(cls(), torch.randn(2, 8, 16, 16))
    assert diff < 1e-4
    assert space.num_zigs == 0  # c1's channels are read through a name that saw the write
    assert any("writes in place" in (g.reason or "") for g in space.groups)


class AugmentedResidual(nn.Module):  # the ResNet pattern: `out += identity` on a fresh tensor
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(8, 8, 1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        identity = self.c0(x)
        out = self.bn(self.c1(identity))
        out += identity
        return self.c2(F.relu(out))


def test_augmented_assignment_without_aliases_stays_out_of_place_and_prunable():
    space, diff = _compact_and_compare(AugmentedResidual(), torch.randn(2, 8, 8, 8))
    assert diff < 1e-4
    (add,) = [n for n in space.graph_module.graph.nodes if n.meta.get(AUGMENTED_KEY) is not None]
    assert add.target is operator.add  # nothing else names `out`: no need to write in place
    assert space.num_zigs == 8  # the residual stream (c0, c1, bn) is one prunable group


def test_augmented_assignment_on_an_alias_is_traced_in_place():
    model = AugmentedThroughIdentity().eval()
    x = torch.randn(2, 8, 16, 16)
    space = fxprune.trace(model, x)
    gm = space.graph_module
    with torch.no_grad():  # the traced graph itself computes what the model computes
        torch.testing.assert_close(gm(x), model(x))
    assert any(n.target is operator.iadd for n in gm.graph.nodes)


class Plain(TwoConvs):
    def forward(self, x):
        return self.c2(F.relu(self.c1(x)))


@pytest.mark.parametrize("hook", ["forward", "forward_pre"])
def test_a_module_with_hooks_is_a_barrier(hook):
    model = Plain()
    if hook == "forward":
        model.c1.register_forward_hook(lambda mod, inp, out: out + 1.0)
    else:
        model.c2.register_forward_pre_hook(lambda mod, inp: (inp[0] + 0.5,))
    space, diff = _compact_and_compare(model, torch.randn(2, 8, 16, 16))
    assert diff < 1e-4
    assert space.num_zigs == 0
    if hook == "forward_pre":  # (a hooked c1 gives its weight no group at all)
        assert any("forward hooks" in (g.reason or "") for g in space.groups)


def test_a_hook_that_changes_the_output_shape_is_propagated():
    """Shape propagation runs a hooked module (with its hooks) instead of its closed-form shape: the
    recorded shape is what the model computes, and the compact model is still exact."""
    model = Plain()
    model.c1.register_forward_hook(lambda mod, inp, out: out.mean(dim=(2, 3), keepdim=True))
    x = torch.randn(2, 8, 16, 16)
    space, diff = _compact_and_compare(model, x)
    c1 = next(n for n in space.graph_module.graph.nodes if n.target == "c1")
    with torch.no_grad():
        assert tuple(c1.meta["val"].shape) == tuple(model.c1(x).shape) == (2, 8, 1, 1)
    assert diff < 1e-4


@pytest.mark.parametrize("which", ["c1", "c2"])
def test_a_parametrized_module_is_a_barrier(which):
    model = Plain()
    parametrizations.weight_norm(getattr(model, which))
    space, diff = _compact_and_compare(model, torch.randn(2, 8, 16, 16))
    assert diff < 1e-4
    assert space.num_zigs == 0


class LeafSharingWeight(nn.Module):
    """A user leaf that uses the traced conv's weight: slicing it for c1 would break the leaf."""

    class Leaf(nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.weight = conv.weight

        def forward(self, x):
            return F.conv2d(x, self.weight, padding=1)

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.leaf = self.Leaf(self.c1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(F.relu(self.c1(x)) + self.leaf(x))


def test_a_leaf_sharing_a_weight_with_a_traced_op_keeps_it_whole():
    model = LeafSharingWeight().eval()
    x = torch.randn(2, 8, 8, 8)
    space = fxprune.trace(model, x, leaf_modules=[LeafSharingWeight.Leaf])
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))
    assert any("shared" in (g.reason or "") for g in space.groups if not g.prunable)


def test_old_weight_norm_gets_an_error_that_says_what_to_do():
    model = Plain()
    torch.nn.utils.weight_norm(model.c1)
    x = torch.randn(2, 8, 8, 8)
    model(x)  # the forward leaves a computed (non-leaf) weight on the module
    space = fxprune.trace(model, x)
    with pytest.raises(fxprune.InputError, match="parametrizations.weight_norm"):
        space.construct_subnet()


class NegativeOrderNorm(TwoConvs):
    def __init__(self, order):
        super().__init__()
        self.order = order

    def forward(self, x):
        h = self.c1(x)
        return self.c2(h * torch.linalg.vector_norm(h, ord=self.order, dim=1, keepdim=True))


@pytest.mark.parametrize("order", [-float("inf"), -1.0, -2.0])
def test_a_norm_of_negative_order_over_channels_is_a_barrier(order):
    space, diff = _compact_and_compare(NegativeOrderNorm(order), torch.randn(2, 8, 8, 8))
    assert diff < 1e-4
    assert space.num_zigs == 0
    assert any("norm of order" in (g.reason or "") for g in space.groups)


@pytest.mark.parametrize("order", [1, 2, float("inf"), 0])
def test_a_norm_of_non_negative_order_over_channels_stays_prunable(order):
    space, diff = _compact_and_compare(NegativeOrderNorm(order), torch.randn(2, 8, 8, 8))
    assert diff < 1e-4
    assert space.num_zigs == 8


class CatOfSplitTuple(TwoConvs):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.c2(self.body(F.relu(self.c1(x))))


@pytest.mark.parametrize("body", [
    lambda h: torch.cat(h.split(4, 1), 1),
    lambda h: torch.cat(h.chunk(2, 1)[::-1], 1),
    lambda h: torch.stack(h.chunk(2, 1), 2).flatten(1, 2),
    lambda h: h * h.mean(axis=(2, 3), keepdim=True),
], ids=["cat-split", "cat-reversed-chunks", "stack-chunks", "mean-axis"])
def test_tuples_passed_whole_and_axis_keyword(body):
    space, diff = _compact_and_compare(CatOfSplitTuple(body), torch.randn(2, 8, 8, 8))
    assert diff < 1e-4
    assert space.num_zigs > 0


class WithFlag(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 4, 3)

    def forward(self, x, double=True):
        y = self.c2(F.relu(self.c1(x)))
        return y * 2 if double else y


def test_concrete_args_become_the_traced_graphs_defaults():
    model = WithFlag().eval()
    x = torch.randn(1, 3, 8, 8)
    space = fxprune.trace(model, x, concrete_args={"double": False})
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x, False))
    with pytest.raises(fxprune.InputError, match="does not take"):
        fxprune.trace(model, x, concrete_args={"doubled": False})


def test_bad_zig_ids_and_bad_verify_inputs_get_clear_errors():
    model = Plain().eval()
    space = fxprune.trace(model, torch.randn(1, 8, 8, 8))
    for bad in ([0.5], [True], ["a"]):
        with pytest.raises(fxprune.InputError, match="integers"):
            space.zero_groups_by_id(bad)
    space.zero_groups_by_id(torch.tensor([1, 2]))  # the ids zero_random_groups returns are accepted back
    assert int(space.zero_zigs().sum()) == 2
    with pytest.raises(fxprune.InputError, match="dense model does not run"):
        space.verify(space.construct_subnet(), inputs=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("body", [
    lambda h: F.interpolate(h, size=(h.shape[1] * 2, h.shape[1] * 2)),
    lambda h: F.adaptive_avg_pool2d(h, h.shape[1]),
    lambda h: F.max_pool2d(h, h.shape[1] // 4),
    lambda h: F.pad(h, (h.shape[1] // 4,) * 4)[..., 2:10, 2:10],
    lambda h: F.pad(h[..., : h.shape[1]], (0, 8)),
], ids=["interpolate-size", "adaptive-pool", "pool-kernel", "pad", "spatial-slice"])
def test_a_channel_count_used_as_a_spatial_size_keeps_its_channels(body):
    space, diff = _compact_and_compare(CatOfSplitTuple(body), torch.randn(2, 8, 16, 16))
    assert diff < 1e-4
    assert space.num_zigs == 0
    assert any("channel count is used as" in (g.reason or "") for g in space.groups)


class KeywordCalls(TwoConvs):
    def forward(self, x):
        h = F.relu(self.c1(input=x))  # a module called with a keyword input
        return self.c2(F.layer_norm(h, h.shape[1:]))  # a normalized shape computed in the graph


def test_calls_a_rule_does_not_cover_become_barriers_not_crashes():
    space, diff = _compact_and_compare(KeywordCalls(), torch.randn(2, 8, 16, 16))
    assert diff < 1e-4
    assert any("does not cover this call" in (g.reason or "") for g in space.groups)


class CountsCalls(TwoConvs):
    def __init__(self, in_place):
        super().__init__()
        self.in_place = in_place
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        if self.in_place:
            self.count.add_(1)
        else:
            self.count += 1
        return self.c2(F.relu(self.c1(x)) * self.count)


class RemembersLastMean(TwoConvs):
    def forward(self, x):
        h = F.relu(self.c1(x))
        self.last_mean = h.detach().mean()  # an attribute written in the forward
        return self.c2(h)


@pytest.mark.parametrize("model", [CountsCalls(True), CountsCalls(False), RemembersLastMean()],
                         ids=["buffer-add_", "buffer-+=", "attribute"])
def test_a_forward_that_writes_module_state_is_refused_and_the_model_left_alone(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attributes = dict(vars(model))
    with pytest.raises(fxprune.TraceError, match="writes module state"):
        fxprune.trace(model, torch.randn(2, 8, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert dict(vars(model)).keys() == attributes.keys()
    assert all(vars(model)[k] is v for k, v in attributes.items())


def test_tensor_constants_fx_puts_on_the_root_are_not_left_on_the_model():
    class Scaled(TwoConvs):
        def forward(self, x):
            return self.c2(F.relu(self.c1(x)) * torch.arange(8.0).view(1, 8, 1, 1))

    model = Scaled().eval()
    space = fxprune.trace(model, torch.randn(1, 8, 8, 8))
    assert not [k for k in vars(model) if "constant" in k]
    space.zero_random_groups(0.5, seed=0)
    space.construct_subnet(verify=True)
