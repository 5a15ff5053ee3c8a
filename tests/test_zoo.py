"""Every torchvision classifier: trace, zero half the prunable ZIGs, construct, outputs equal.

Inputs are small where the architecture allows (64x64; 96x96 for Inception; ViT and
MaxViT fix 224x224).  Two models are left out of CI for size (see fxprune.zoo.CI_LEAVE_OUT);
``python benchmarks/bench_zoo.py`` runs all of them at full resolution.
"""
import pytest
import torch

from fxprune import zoo

NAMES = [n for n in zoo.zoo_names() if n not in zoo.CI_LEAVE_OUT]


def test_leave_out_list_names_real_models():
    assert set(zoo.CI_LEAVE_OUT) <= set(zoo.zoo_names())
    assert len(NAMES) >= 78


@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_prunes_exactly(name):
    model = zoo.build(name)
    x = zoo.example_input(name, small=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, space, small = zoo.check_zero_invariance(model, x, fraction=0.5, seed=0)
    assert result.zigs > 0
    assert result.zeroed == int(0.5 * result.zigs)
    assert result.exact, f"{name}: max|diff| {result.max_abs_diff:.3g} > {result.tolerance:.3g}"
    assert result.params_compact < result.params_dense
    if name.startswith(zoo.FULL_COVERAGE_FAMILIES):
        assert zoo.unprunable_layer_outputs(space, model) == {}
    if name.startswith(zoo.TRANSFORMER_FAMILIES):  # at least every MLP hidden dim prunes
        hidden = zoo.mlp_hidden_layers(space)
        assert hidden
        assert all(r is None for layer in hidden for r in space.reasons_for(f"{layer}.weight", 0))
    # only the zeroing touched the model: every tensor that changed is now zero where it changed
    for k, v in model.state_dict().items():
        changed = before[k] != v
        assert torch.all(v[changed] == 0), k
