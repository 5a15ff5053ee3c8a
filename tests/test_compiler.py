"""The compiler's contract on small hand-made models: errors, barriers, empty solution, no mutation."""
import pytest
import torch
import torch.fx as fx
import torchvision
from torch import nn

import fxprune
from fxprune.metrics import count_flops, count_params


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = y + torch.relu(self.bn2(self.conv2(y)))  # residual: conv1/bn1 and conv2/bn2 couple
        y = torch.relu(self.conv3(y))
        return self.fc(torch.flatten(y, 1))  # conv -> flatten -> linear


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def test_groups_of_small_cnn():
    model = _randomise_bn(SmallCNN()).eval()
    space = fxprune.trace(model, torch.randn(1, 3, 8, 8))
    prunable = {g.name: g.channels for g in space.groups if g.prunable}
    # residual stream (conv1, bn1, conv2, bn2 tied) and conv3 -> flatten -> fc
    assert prunable == {"conv1.weight[dim 0]": 16, "conv3.weight[dim 0]": 32}
    fc = next(g for g in space.groups if g.name == "fc.weight[dim 0]")
    assert not fc.prunable and "output" in fc.reason
    conv3 = next(g for g in space.groups if g.name == "conv3.weight[dim 0]")
    fc_cols = next(s for s in conv3.slices if s.name == "fc.weight")
    assert fc_cols.dim == 1 and len(fc_cols.indices) == 32 * 16  # one channel = a run of 4x4 features


def test_zero_invariance_and_smaller_model():
    model = _randomise_bn(SmallCNN()).eval()
    x = torch.randn(4, 3, 8, 8)
    space = fxprune.trace(model, x)
    # the layout is built on first use; its ZIG count is the one the space reports without it
    assert space.num_zigs == space.layout.num_zigs == sum(g.channels for g in space.prunable_groups)
    assert space.layout is space.layout
    zeroed = space.zero_random_groups(0.5, seed=3)
    assert zeroed.numel() == space.num_zigs // 2
    assert int(space.zero_zigs().sum()) == zeroed.numel()
    small = space.construct_subnet(verify=True)
    assert isinstance(small, fx.GraphModule)
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert count_params(small) < count_params(model)
    assert count_flops(small, x) < count_flops(model, x)
    assert small.conv3.out_channels == 32 - int(space.zero_zigs()[16:].sum())  # ZIG ids follow graph order


def test_empty_solution_keeps_everything():
    model = _randomise_bn(SmallCNN()).eval()
    x = torch.randn(2, 3, 8, 8)
    small = fxprune.trace(model, x).construct_subnet()
    assert count_params(small) == count_params(model)
    torch.testing.assert_close(small(x), model(x))


def test_trace_and_construct_never_mutate_the_model():
    model = SmallCNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = fxprune.trace(model, torch.randn(2, 3, 8, 8))
    space.construct_subnet()
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched by analysis


def test_verify_catches_a_wrong_subnet():
    model = _randomise_bn(SmallCNN()).eval()
    space = fxprune.trace(model, torch.randn(1, 3, 8, 8))
    space.zero_random_groups(0.25, seed=0)
    small = space.construct_subnet()
    with torch.no_grad():
        small.conv3.bias.add_(1.0)  # break it on purpose
    with pytest.raises(fxprune.VerificationError, match="differs"):
        space.verify(small)


def test_rescue_keeps_a_layer_from_vanishing():
    model = _randomise_bn(SmallCNN()).eval()
    x = torch.randn(1, 3, 8, 8)
    space = fxprune.trace(model, x)
    space.zero_random_groups(1.0)  # every prunable ZIG zero: layers keep one (zero) channel
    small = space.construct_subnet(verify=True)
    assert small.conv1.out_channels == 1 and small.conv3.out_channels == 1
    torch.testing.assert_close(small(x), model(x))


@fx.wrap
def mystery_op(x):
    return x.flip(1) * 2  # mixes channels in a way no rule describes


class WithUnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = mystery_op(self.b(y))
        return self.head(torch.relu(self.c(y)))


def test_unknown_op_is_a_barrier_that_names_the_op():
    model = WithUnknownOp().eval()
    x = torch.randn(1, 3, 4, 4)
    space = fxprune.trace(model, x)
    by_name = {g.name: g for g in space.groups}
    assert not by_name["b.weight[dim 0]"].prunable
    assert "mystery_op" in by_name["b.weight[dim 0]"].reason
    assert by_name["a.weight[dim 0]"].prunable and by_name["c.weight[dim 0]"].prunable
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    torch.testing.assert_close(small(x), model(x))
    assert small.b.out_channels == 8


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # control flow on values: FX cannot trace it
            return self.conv(x)
        return -self.conv(x)


def test_untraceable_model_raises_trace_error_naming_the_code():
    with pytest.raises(fxprune.TraceError, match=r"x.sum\(\) > 0[\s\S]*DataDependent.forward, the model you trace"):
        fxprune.trace(DataDependent(), torch.randn(1, 3, 4, 4))


def test_trace_error_in_a_submodule_names_it_as_the_leaf_to_declare():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = DataDependent()

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(fxprune.TraceError, match=r"DataDependent.forward \('inner'\): declare it a leaf"):
        fxprune.trace(Outer(), torch.randn(1, 3, 4, 4))


def _branch_on_values(x):
    if x.sum() > 0:
        return x
    return -x


def test_trace_error_in_a_free_function_suggests_fx_wrap():
    class CallsFunction(nn.Module):
        def forward(self, x):
            return _branch_on_values(x)

    with pytest.raises(fxprune.TraceError, match=r"_branch_on_values\(\), a function the forward calls[\s\S]*fx.wrap"):
        fxprune.trace(CallsFunction(), torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("op", ["masked_select", "repeat_interleave"])
def test_value_dependent_output_shapes_get_a_trace_error_naming_the_node(op):
    class ValueDependentShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            h = self.conv(x)
            if op == "masked_select":
                return h.masked_select(h > 0).sum()
            return h.repeat_interleave(torch.tensor([1, 2, 0, 1]), dim=1).sum()

    with pytest.raises(fxprune.TraceError, match=rf"graph node '{op}'[\s\S]*depends on the values[\s\S]*out of the model"):
        fxprune.trace(ValueDependentShape(), torch.randn(1, 3, 4, 4))


def test_leaf_module_makes_it_traceable_and_unprunable():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 3, 1)
            self.inner = DataDependent()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv(self.inner(self.stem(x)))

    space = fxprune.trace(Wrapper(), torch.randn(1, 3, 4, 4), leaf_modules=[DataDependent])
    assert space.num_zigs == 0
    stem = next(g for g in space.groups if g.name == "stem.weight[dim 0]")
    assert "'inner' (DataDependent)" in stem.reason
    assert not any(s.name.startswith("inner.") for g in space.groups for s in g.slices)


def test_wrong_inputs_get_clear_errors():
    model = SmallCNN()
    with pytest.raises(fxprune.InputError, match="conv1"):
        fxprune.trace(model, torch.randn(1, 5, 8, 8))  # 5 channels into a 3-channel conv
    with pytest.raises(fxprune.InputError, match="tensor or a tuple"):
        fxprune.trace(model, "not a tensor")
    with pytest.raises(fxprune.InputError, match="takes 1 inputs"):
        fxprune.trace(model, (torch.randn(1, 3, 8, 8), torch.randn(1)))
    with pytest.raises(TypeError, match="nn.Module"):
        fxprune.trace(lambda x: x, torch.randn(1))


def test_summary_is_a_table_with_reasons():
    space = fxprune.trace(torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32))
    text = space.summary()
    assert "prunable" in text and "why not" in text
    assert "fc.weight[dim 0]" in text and "output interface" in text


def test_resnet_every_conv_output_is_prunable():
    model = torchvision.models.resnet18().eval()
    space = fxprune.trace(model, torch.randn(1, 3, 32, 32))
    covered = {s.name for g in space.groups if g.prunable for s in g.slices if s.role == "producer" and s.dim == 0}
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs <= covered
    assert "fc.weight" not in covered


def test_subnet_saves_without_user_classes(tmp_path):
    model = _randomise_bn(SmallCNN()).eval()
    x = torch.randn(1, 3, 8, 8)
    space = fxprune.trace(model, x)
    space.zero_random_groups(0.5, seed=1)
    small = space.construct_subnet()
    path = tmp_path / "small.pt2"
    torch.save(small.state_dict(), tmp_path / "sd.pt")
    code = small.code
    assert "SmallCNN" not in code
    assert all(type(m).__module__.startswith("torch.") for m in small.modules() if m is not small)
    del path


class InPlaceShift(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(3, 8, 1)
        self.d = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y.add_(1.0)  # in place: the later reader of `y` sees zero channels turned into ones
        z = self.c(x)
        z.relu_()  # in place but zero stays zero
        return self.b(y) + self.d(z)


def test_in_place_ops_update_what_later_readers_see():
    model = InPlaceShift().eval()
    x = torch.randn(2, 3, 4, 4)
    space = fxprune.trace(model, x)
    by_name = {g.name: g for g in space.groups}
    assert not by_name["a.weight[dim 0]"].prunable and "not zero" in by_name["a.weight[dim 0]"].reason
    assert by_name["c.weight[dim 0]"].prunable
    space.zero_random_groups(1.0)
    small = space.construct_subnet(verify=True)
    torch.testing.assert_close(small(x), model(x))


class InPlaceThroughView(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y.view(y.size(0), 8, -1).add_(1.0)  # the write lands in `y` through a view
        return self.b(y)


def test_in_place_write_through_a_view_is_a_barrier():
    model = InPlaceThroughView().eval()
    x = torch.randn(1, 3, 4, 4)
    space = fxprune.trace(model, x)
    assert space.num_zigs == 0
    reason = next(g for g in space.groups if g.name == "a.weight[dim 0]").reason
    assert "writes in place" in reason and "'a' (Conv2d) also refers to" in reason
    small = space.construct_subnet(verify=True)
    torch.testing.assert_close(small(x), model(x))


class TiedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 6)
        self.c = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)
        self.c.weight = self.a.weight  # one tensor, two names: `a` reads the untracked input

    def forward(self, x):
        h = torch.relu(self.a(x))
        h2 = torch.relu(self.c(torch.relu(self.b(h))))
        return self.head(h + h2 * 0.5)


def test_tied_weights_share_atoms_and_respect_every_use():
    model = TiedWeights().eval()
    x = torch.randn(2, 6)
    space = fxprune.trace(model, x)
    by_name = {g.name: g for g in space.groups}
    assert by_name["a.weight[dim 0]"].prunable  # rows: tied outputs of a and c prune together
    assert not by_name["b.weight[dim 0]"].prunable and "shared" in by_name["b.weight[dim 0]"].reason
    assert all(s.name != "c.weight" for g in space.groups for s in g.slices)  # one name per tensor
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    torch.testing.assert_close(small(x), model(x))
    assert small.a.weight is small.c.weight


class HandWrittenAttention(nn.Module):
    def __init__(self, d=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)
        return self.head(self.proj(y.transpose(1, 2).reshape(b, n, d)).mean(1))


def test_head_dims_prune_through_explicit_scale_attention():
    model = HandWrittenAttention().eval()
    x = torch.randn(2, 5, 16)
    space = fxprune.trace(model, x)
    qkv = next(g for g in space.groups if g.name == "qkv.weight[dim 0]")
    assert qkv.prunable and qkv.channels == 8  # one ZIG = index j of the head dim, in q, k, v and every head
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    kept = small.proj.in_features // 2  # head dims kept, the same in both heads
    assert 0 < kept < 8 and small.qkv.out_features == 3 * 2 * kept
    x2 = torch.randn(3, 7, 16)  # other batch and sequence lengths
    torch.testing.assert_close(small(x2), model(x2))


def test_default_scale_attention_prunes_head_dims_with_the_dense_scale_written_in():
    class DefaultScale(HandWrittenAttention):
        def forward(self, x):
            b, n, d = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            return self.head(self.proj(y.transpose(1, 2).reshape(b, n, d)).mean(1))

    model = DefaultScale().eval()
    space = fxprune.trace(model, torch.randn(2, 5, 16))
    qkv = next(g for g in space.groups if g.name == "qkv.weight[dim 0]")
    assert qkv.prunable
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    assert small.proj.in_features < 16
    sdpa = next(n for n in small.graph.nodes if n.target is torch.nn.functional.scaled_dot_product_attention)
    assert sdpa.kwargs["scale"] == 1 / 8**0.5  # 1/sqrt of the dense head dim
    x2 = torch.randn(3, 7, 16)
    torch.testing.assert_close(small(x2), model(x2))


def test_groups_partition_the_zigs_and_their_slices_hold_only_their_zigs():
    # Group.zigs and Group.slices are built lazily from shared arrays: check them against the atom table.
    space = fxprune.trace(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))
    index, table = space._zigs, space._table
    members = [z for g in space.groups for z in g.zigs]
    assert sorted(members) == list(range(index.num_components))  # every ZIG in exactly one group
    for g in space.groups:
        assert g.channels == len(g.zigs) > 0
        assert g.prunable == (g.reason is None)
        own = set(g.zigs)
        for s in g.slices:
            atoms = table.param_dim(s.name, s.dim).atoms[s.indices]
            assert set(index.atom_zig[atoms].tolist()) <= own


def test_shape_propagation_records_every_node_output_included():
    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x, scale: float = 2.0):  # a default the example inputs leave out
            y = self.conv(x)
            return y * scale, y.mean(dim=(2, 3))

    space = fxprune.trace(TwoOutputs(), torch.randn(2, 3, 8, 8))
    nodes = list(space.graph_module.graph.nodes)
    assert all("val" in n.meta for n in nodes)
    out = nodes[-1].meta["val"]
    assert [tuple(t.shape) for t in out] == [(2, 4, 6, 6), (2, 4)]


class SubclassedConv(nn.Conv2d):  # FX traces into it: F.conv2d on the stored weight and bias
    pass


def test_dimensions_no_op_gives_a_meaning_form_no_groups():
    model = nn.Sequential(SubclassedConv(3, 8, 3), nn.ReLU(), SubclassedConv(8, 4, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    space = fxprune.trace(model, x)
    # the kernel dims (and the first conv's input channels) are no groups: every group slices something
    assert [g.name for g in space.groups] == ["0.weight[dim 0]", "2.weight[dim 0]"]
    assert all(g.slices for g in space.groups)
    assert space.reasons_for("0.weight", 2) == ["not coupled to any channel (no rule gave this dimension a meaning)"] * 3
    space.zero_random_groups(0.5, seed=0)
    small = space.construct_subnet(verify=True)
    assert small.get_parameter("0.weight").shape == (4, 3, 3, 3)


class OptionalMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, mask=None):
        y = self.conv(x)
        if mask is not None:  # FX sees a Proxy here, never None
            y = y * mask
        return y


def test_an_optional_input_left_out_gets_advice_to_fix_it_with_concrete_args():
    with pytest.raises(fxprune.InputError, match=r"optional inputs \['mask'\][\s\S]*concrete_args") as info:
        fxprune.trace(OptionalMask(), torch.randn(1, 3, 4, 4))
    assert "While executing" not in str(info.value)  # no interpreter graph dump in the message
    space = fxprune.trace(OptionalMask(), torch.randn(1, 3, 4, 4), concrete_args={"mask": None})
    assert space.graph_module(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)
