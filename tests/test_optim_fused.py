"""The fused CPU kernels (numba) take the pruning steps of the SGD and Adam rules and prune like the eager path.

The kernels add row sums in another order (and in float64), so the check is on the
decisions (marked and zero sets, the exact target) and on the parameters to float
tolerance; the eager reference is the same optimizer with the kernels turned off.
"""
import pytest
import torch
from torch import nn

from fxprune.optim import DHSPG, HESSO, HSPG
from fxprune.optim import cpu_kernels, fused_sweeps
from fxprune.optim.manual_layout import stand_in_space

STEPS = 12


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))


SGD_SETTINGS = {
    "momentum": dict(momentum=0.9),
    "plain": dict(),
    "weight-decay": dict(weight_decay=1e-3),
    "momentum-weight-decay-dampening": dict(momentum=0.9, weight_decay=1e-3, dampening=0.3),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
}

OPTIMIZERS = {
    "dhspg": lambda space, kw: DHSPG(space, lr=0.1, target_group_sparsity=0.5, start_pruning_step=1,
                                     pruning_steps=9, pruning_periods=2, **kw),
    "hspg": lambda space, kw: HSPG(space, lr=0.1, lmbda=20.0, epsilon=0.9, warmup_steps=2, **kw),
    "hesso": lambda space, kw: HESSO(space, lr=0.1, target_group_sparsity=0.5, start_pruning_step=1,
                                     pruning_steps=9, **kw),
}


def run(make, settings, fused: bool, dtype=torch.float32):
    torch.manual_seed(0)
    model = small_cnn().to(dtype)
    opt = make(stand_in_space(model), settings)
    if not fused:
        opt._fused = None
    gen = torch.Generator().manual_seed(1)
    counts = []
    for _ in range(STEPS):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()
        counts.append(opt.stats()["last_step"].get("fused", 0))
    return model, opt, counts


def assert_same_pruning(a, b, tol):
    (model_a, opt_a, _), (model_b, opt_b, _) = a, b
    assert torch.equal(opt_a.redundant_zigs(), opt_b.redundant_zigs())
    assert torch.equal(opt_a.zero_zigs(), opt_b.zero_zigs())
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("setting", sorted(SGD_SETTINGS))
def test_fused_dhspg_prunes_like_eager(setting):
    fused = run(OPTIMIZERS["dhspg"], SGD_SETTINGS[setting], fused=True)
    eager = run(OPTIMIZERS["dhspg"], SGD_SETTINGS[setting], fused=False)
    counts = fused[2]
    # Every prunable parameter (2 convs' weights and biases, 2 BNs' weights and biases) runs fused on the
    # pruning steps that read sums; a first momentum step creates the buffers eagerly.
    first = 1 if "momentum" in SGD_SETTINGS[setting] else 0
    assert counts[0] == 0 and all(c == 8 for c in counts[1 + first:10])
    # Holding zeros afterwards needs no sums: SGD's eager step is as cheap there, and runs.
    assert not any(counts[10:])
    assert not any(eager[2])
    assert int(fused[1].zero_zigs().sum()) == fused[1].target_zero_count
    assert_same_pruning(fused, eager, tol=1e-5)


@pytest.mark.parametrize("kind", ["hspg", "hesso"])
def test_fused_hspg_and_hesso_prune_like_eager(kind):
    fused = run(OPTIMIZERS[kind], dict(momentum=0.9, weight_decay=1e-4), fused=True)
    eager = run(OPTIMIZERS[kind], dict(momentum=0.9, weight_decay=1e-4), fused=False)
    assert sum(fused[2]) > 0
    assert bool(fused[1].zero_zigs().any())
    assert_same_pruning(fused, eager, tol=1e-5)


def test_float64_parameters_run_fused_in_float64():
    fused = run(OPTIMIZERS["dhspg"], dict(momentum=0.9), fused=True, dtype=torch.float64)
    eager = run(OPTIMIZERS["dhspg"], dict(momentum=0.9), fused=False, dtype=torch.float64)
    assert max(fused[2]) == 8
    assert_same_pruning(fused, eager, tol=1e-12)


def test_parameters_the_kernels_do_not_cover_run_eagerly_in_the_same_step():
    def make(space, kw):
        # A channels-last conv weight is not contiguous: its rows are not free views.
        space.model[3].weight.data = space.model[3].weight.data.to(memory_format=torch.channels_last)
        return OPTIMIZERS["dhspg"](space, kw)

    fused = run(make, dict(momentum=0.9), fused=True)
    eager = run(make, dict(momentum=0.9), fused=False)
    assert max(fused[2]) == 7
    assert_same_pruning(fused, eager, tol=1e-5)


def test_without_numba_every_step_runs_eagerly(monkeypatch):
    monkeypatch.setattr(fused_sweeps, "load_kernels", lambda: None)
    import fxprune.optim.group_sparse_optimizer as gso
    monkeypatch.setattr(gso, "load_kernels", lambda: None)
    _, opt, counts = run(OPTIMIZERS["dhspg"], dict(momentum=0.9), fused=True)
    assert opt._fused is None and not any(counts)
    assert int(opt.zero_zigs().sum()) == opt.target_zero_count


ADAM_SETTINGS = {
    "adam": dict(variant="adam", lr=0.01),
    "adam-l2": dict(variant="adam", lr=0.01, weight_decay=1e-2, betas=(0.8, 0.99), eps=1e-6),
    "adamw": dict(variant="adamw", lr=0.01, weight_decay=0.05),
}


@pytest.mark.parametrize("setting", sorted(ADAM_SETTINGS))
def test_fused_adam_steps_prune_like_eager(setting):
    def make(space, kw):
        return DHSPG(space, target_group_sparsity=0.5, start_pruning_step=0, pruning_steps=9, pruning_periods=2, **kw)

    fused = run(make, ADAM_SETTINGS[setting], fused=True)
    eager = run(make, ADAM_SETTINGS[setting], fused=False)
    # Adam's moments are created in the kernels' first pass: the very first step already runs fused,
    # and so do the steps that hold the zero groups afterwards.
    assert all(c == 8 for c in fused[2]) and not any(eager[2])
    assert int(fused[1].zero_zigs().sum()) == fused[1].target_zero_count
    assert_same_pruning(fused, eager, tol=1e-5)
    for p in fused[0].parameters():  # the moments and step counts match too
        state_f = fused[1].state[p]
        state_e = eager[1].state[dict(zip(map(id, fused[0].parameters()), eager[0].parameters()))[id(p)]]
        assert float(state_f["step"]) == float(state_e["step"])
        torch.testing.assert_close(state_f["exp_avg_sq"], state_e["exp_avg_sq"], rtol=1e-5, atol=1e-7)


def test_hesso_with_adamw_prunes_like_eager():
    def make(space, kw):
        return HESSO(space, lr=0.01, variant="adamw", weight_decay=0.05, target_group_sparsity=0.5,
                     start_pruning_step=1, pruning_steps=9)

    fused = run(make, {}, fused=True)
    eager = run(make, {}, fused=False)
    assert sum(fused[2]) > 0
    assert_same_pruning(fused, eager, tol=1e-5)


def test_kernels_match_the_sgd_formulas_row_by_row():
    gen = torch.Generator().manual_seed(0)
    x, g, buf = (torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(3))
    want = torch.tensor([1, 0, 1, 1, 0], dtype=torch.uint8)
    out = torch.full((3, 5), -1.0, dtype=torch.float64)
    momentum, undamped, wd = 0.9, 0.7, 0.01
    new_buf = momentum * buf + undamped * (g + wd * x)
    u = (g + wd * x) + momentum * new_buf  # Nesterov
    cpu_kernels.sgd_direction_row_sums(x.numpy(), g.numpy(), buf.numpy(), want.numpy(), out.numpy(),
                                       *cpu_kernels.as_dtype((wd, momentum, undamped), x.numpy().dtype), True, True)
    torch.testing.assert_close(buf, new_buf)
    expected = torch.stack([(x * x).sum(1), (x * u).sum(1), (u * u).sum(1)])
    torch.testing.assert_close(out[:, want.bool()], expected[:, want.bool()])
    assert bool((out[:, ~want.bool()] == -1).all())  # rows nobody asked for are not written

    scale, keep = torch.rand(5, generator=gen, dtype=torch.float64), torch.tensor([1.0, 0, 1, 1, 0], dtype=torch.float64)
    expected_x = scale[:, None] * x - 0.1 * keep[:, None] * u
    cpu_kernels.sgd_apply_rows(x.numpy(), g.numpy(), buf.numpy(), scale.numpy(), keep.numpy(),
                               *cpu_kernels.as_dtype((-0.1, wd, momentum), x.numpy().dtype), True, True)
    torch.testing.assert_close(x, expected_x)


def test_with_more_threads_than_the_kernels_are_used_for_every_step_runs_eagerly():
    before = torch.get_num_threads()
    torch.set_num_threads(fused_sweeps.MAX_THREADS + 1)
    try:
        _, opt, counts = run(OPTIMIZERS["dhspg"], dict(momentum=0.9), fused=True)
    finally:
        torch.set_num_threads(before)
    assert opt._fused is not None and not any(counts)
    assert int(opt.zero_zigs().sum()) == opt.target_zero_count


def test_adam_kernels_match_the_adam_formulas_row_by_row():
    gen = torch.Generator().manual_seed(0)
    x, g, m = (torch.randn(4, 6, generator=gen, dtype=torch.float64) for _ in range(3))
    v = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    wd, beta1, beta2, eps, step = 0.01, 0.9, 0.99, 1e-8, 3
    bc1, bc2_sqrt = 1 - beta1**step, (1 - beta2**step) ** 0.5
    d = g + wd * x
    new_m, new_v = m + (1 - beta1) * (d - m), beta2 * v + (1 - beta2) * d * d
    u = (new_m / bc1) / (new_v.sqrt() / bc2_sqrt + eps)
    out = torch.zeros(3, 4, dtype=torch.float64)
    scalars = cpu_kernels.as_dtype((wd, 1 - beta1, beta2, 1 - beta2, bc2_sqrt, eps, bc1), x.numpy().dtype)
    cpu_kernels.adam_direction_row_sums(x.numpy(), g.numpy(), m.numpy(), v.numpy(), torch.ones(4, dtype=torch.uint8).numpy(),
                                        out.numpy(), *scalars)
    torch.testing.assert_close(m, new_m)
    torch.testing.assert_close(v, new_v)
    torch.testing.assert_close(out, torch.stack([(x * x).sum(1), (x * u).sum(1), (u * u).sum(1)]))

    scale, keep = torch.rand(4, generator=gen, dtype=torch.float64), torch.tensor([1.0, 0, 1, 1], dtype=torch.float64)
    expected_x = scale[:, None] * x - 0.01 * keep[:, None] * u
    cpu_kernels.adam_apply_rows(x.numpy(), m.numpy(), v.numpy(), scale.numpy(), keep.numpy(),
                                *cpu_kernels.as_dtype((-0.01, bc2_sqrt, eps, bc1), x.numpy().dtype))
    torch.testing.assert_close(x, expected_x)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_gradients_that_require_grad_run_fused():
    # backward(create_graph=True) leaves gradients that require grad themselves.
    torch.manual_seed(0)
    model = small_cnn()
    opt = OPTIMIZERS["dhspg"](stand_in_space(model), dict(momentum=0.9))
    fused = []
    for _ in range(STEPS):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().sum().backward(create_graph=True)
        opt.step()
        fused.append(opt.stats()["last_step"].get("fused", 0))
    assert max(fused) == 8
    assert int(opt.zero_zigs().sum()) == opt.target_zero_count


def test_a_step_counts_as_an_in_place_write_for_autograd():
    # A graph that saved the weight before the step must refuse to backpropagate afterwards, as with
    # torch's optimizers: the kernels write through NumPy views, which autograd does not see by itself.
    torch.manual_seed(0)
    model = small_cnn()
    opt = OPTIMIZERS["dhspg"](stand_in_space(model), dict(momentum=0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = model[0](x).square().sum()
    out.backward(retain_graph=True)
    weight, buffer = model[0].weight, opt.state[model[0].weight]["momentum_buffer"]
    versions = weight._version, buffer._version
    opt.step()
    assert opt.stats()["last_step"]["fused"] > 0
    assert weight._version > versions[0] and buffer._version > versions[1]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out, x)


def test_rows_return_to_their_dtype_buffer_after_a_detour_through_another_dtype():
    # Steps in float64 (eager: the momentum buffers stay float32) move a slice's row sums to the float64
    # buffer; back in the same float32 storage, the fused pass must move them back, not add both.
    def run_detour(fused):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = HSPG(stand_in_space(model), lr=0.1, momentum=0.9, lmbda=0.5, epsilon=0.3)
        if not fused:
            opt._fused = None
        gen = torch.Generator().manual_seed(1)
        for step in range(8):
            if step == 2:
                kept = [p.data for p in model.parameters()]
                for p in model.parameters():
                    p.data = p.data.double()
            if step == 4:
                for p, k in zip(model.parameters(), kept):
                    k.copy_(p.data)
                    p.data = k
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            opt.step()
        return model, opt

    fused_model, fused_opt = run_detour(True)
    eager_model, eager_opt = run_detour(False)
    assert fused_opt.stats()["last_step"]["fused"] > 0
    for a, b in zip(fused_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_momentum_that_rounds_to_zero_in_float32_still_writes_the_buffer():
    def make(space, kw):  # every step inside the pruning window, so the last one runs fused
        return DHSPG(space, lr=0.1, target_group_sparsity=0.5, start_pruning_step=1, pruning_steps=20, **kw)

    fused = run(make, dict(momentum=1e-50), fused=True)
    eager = run(make, dict(momentum=1e-50), fused=False)
    assert fused[2][-1] == 8
    for p_f, p_e in zip(fused[0].parameters(), eager[0].parameters()):
        buf_f, buf_e = fused[1].state[p_f].get("momentum_buffer"), eager[1].state[p_e].get("momentum_buffer")
        assert (buf_f is None) == (buf_e is None)
        if buf_f is not None:
            torch.testing.assert_close(buf_f, buf_e)


def test_values_whose_square_underflows_are_not_reported_as_zero():
    torch.manual_seed(0)
    model = small_cnn()
    opt = OPTIMIZERS["dhspg"](stand_in_space(model), dict(momentum=0.9))
    with torch.no_grad():
        model[0].weight[0] = 1e-23  # its square is 0 in float32
        model[0].bias[0] = 0.0
        model[1].weight[0] = 0.0
        model[1].bias[0] = 0.0
    assert not bool(opt.zero_zigs()[0])
    with torch.no_grad():
        model[0].weight[0] = 0.0
    assert bool(opt.zero_zigs()[0])
