"""``gcnet_d2.fast.swap``: the one class switch every speed-up goes through, and its undo."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

from gcnet_d2.fast import restore_classes, swap_classes


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class PlainChild(Plain):
    """A subclass with behaviour of its own: a mapping keyed by ``Plain`` leaves it alone."""


class Fast(Plain):
    fast_attributes = ("_cache",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.__dict__["_cache"] = True
        return super().forward(x)


class FastConv(Conv2d):
    pass


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        Plain(),
        PlainChild(),
        Conv2d(3, 3, 1, norm=FrozenBatchNorm2d(3)),
        nn.Sequential(Plain(), Conv2d(3, 3, 3)),
    )


def classes(m: nn.Module) -> dict[str, type]:
    return {name: type(sub) for name, sub in m.named_modules()}


def test_mapping_swaps_exact_types_and_restore_gives_them_back():
    net = model()
    plain_classes, state = classes(net), copy.deepcopy(net.state_dict())
    assert swap_classes(net, {Plain: Fast}) is net
    assert [type(m) for m in (net[0], net[1], net[3][0])] == [Fast, PlainChild, Fast]
    net[0](torch.zeros(1, 3))  # the fast class leaves state on the module
    assert vars(net[0])["_cache"] is True
    assert restore_classes(net) is net
    assert classes(net) == plain_classes
    assert not any({"_cache", "_plain_class"} & set(vars(m)) for m in net.modules())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_predicate_swaps_and_restore_by_class_is_selective():
    net = model()
    plain_classes = classes(net)
    swap_classes(net, {Plain: Fast})
    swap_classes(net, lambda m: FastConv if type(m) is Conv2d and m.norm is not None else None)
    assert type(net[2]) is FastConv and type(net[3][1]) is Conv2d  # no norm: left alone
    restore_classes(net, FastConv)
    assert type(net[2]) is Conv2d and type(net[0]) is Fast  # only FastConv restored
    restore_classes(net, (Fast,))
    assert classes(net) == plain_classes


def test_subclass_swapped_to_a_sibling_gets_its_own_class_back():
    net = nn.Sequential(PlainChild())
    swap_classes(net, lambda m: Fast if isinstance(m, Plain) and type(m) is not Fast else None)
    assert type(net[0]) is Fast
    swap_classes(net, {Plain: Fast})  # again: no change, the recorded class stays
    restore_classes(net, Fast)
    assert type(net[0]) is PlainChild


def test_a_module_built_as_the_fast_class_restores_to_its_plain_base():
    net = nn.Sequential(Fast())
    restore_classes(net)  # nothing recorded: left alone
    assert type(net[0]) is Fast
    restore_classes(net, Fast)
    assert type(net[0]) is Plain


@pytest.mark.parametrize("restore", [True, False])
def test_swapped_outputs_follow_the_class(restore):
    net, x = model(), torch.randn(2, 3)
    want = net[0](x)
    swap_classes(net, {Plain: Fast})
    if restore:
        restore_classes(net)
    torch.testing.assert_close(net[0](x), want, rtol=0, atol=0)
    assert ("_cache" in vars(net[0])) is not restore
