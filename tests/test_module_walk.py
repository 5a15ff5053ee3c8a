"""walk_modules must list exactly what named_modules(remove_duplicate=False) lists, in its order:
the analysis names parameters by the first name this walk reaches."""
import torchvision
from torch import nn

from passes.module_walk import walk_modules


def _same_as_named_modules(root: nn.Module) -> None:
    expected = [(name, id(m)) for name, m in root.named_modules(remove_duplicate=False)]
    assert [(name, id(m)) for name, m in walk_modules(root).items()] == expected


def test_matches_named_modules_on_a_deep_zoo_model():
    _same_as_named_modules(torchvision.models.mobilenet_v3_small())


def test_shared_and_missing_children_are_listed_like_named_modules():
    shared = nn.Linear(2, 2)
    root = nn.Module()
    root.a = nn.Sequential(shared, nn.ReLU())
    root.b = shared  # one module under two names
    root.c = None  # a registered empty slot
    root.d = nn.ModuleDict({"x": nn.Sequential(nn.Identity()), "y": shared})
    _same_as_named_modules(root)
    names = list(walk_modules(root))
    assert names.count("b") == 1 and "a.0" in names and "d.y" in names and "c" not in names
