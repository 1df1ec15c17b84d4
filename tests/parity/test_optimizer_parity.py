"""Optimiser and learning-rate schedule equal to mmdetection's, each from its own builder.

mmdetection: mmengine's ``build_optim_wrapper`` on the ``optim_wrapper`` and its schedulers
on the ``param_scheduler`` of mmdetection's own GCNet config file (epochs converted to
iterations as mmengine's runner does, with the epoch length our configs assume: 7,329).
Ours: detectron2's ``build_optimizer`` / ``build_lr_scheduler`` with the table config.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from detectron2.solver import build_lr_scheduler, build_optimizer
from torch import nn

import gcnet_d2
from gcnet_d2.layers.norm import FrozenStatsBatchNorm2d
from tests.parity import mmdet_reference as ref

ROW = "gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco.yaml"
MMDET_CONFIG = "mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py"
EPOCH_LENGTH = 7329  # iterations per epoch that configs/Base-GCNet-RCNN-FPN.yaml assumes
CHECKED_ITERS = (0, 1, 250, 499, 500, 58631, 58632, 80619, 87947)


@pytest.fixture
def mmdet() -> None:
    """The tests that build mmdetection's optimiser and schedulers need it: skipped where its
    stack is not installed (an error with ``CI`` set); the others never import it."""
    if not ref.mmdet_available():
        pytest.skip(ref.mmdet_unavailable_reason())


def _mmdet_cfg():
    import mmdet
    from mmengine.config import Config

    root = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "gcnet")
    return Config.fromfile(os.path.join(root, MMDET_CONFIG))


def _toy_model() -> nn.Module:
    """Every kind of parameter the detectors have: conv weights and biases, BN, frozen-
    statistics BN, GroupNorm, LayerNorm (GC blocks) and fully connected layers."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        FrozenStatsBatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.LayerNorm([4, 1, 1]),
        nn.Linear(4, 5),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1)
    return model


def _mmdet_optimizer(model: nn.Module, cfg):  # noqa: ANN202
    from mmengine.optim import build_optim_wrapper

    return build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))


def _mmdet_schedulers(optimizer, cfg) -> list:  # noqa: ANN001
    """The runner's scheduler construction: by-epoch ones converted to iterations."""
    from mmengine.registry import PARAM_SCHEDULERS

    schedulers = []
    for sched in copy.deepcopy(cfg.param_scheduler):
        if sched.pop("by_epoch", True):
            cls = PARAM_SCHEDULERS.get(sched.pop("type"))
            schedulers.append(
                cls.build_iter_from_epoch(optimizer, epoch_length=EPOCH_LENGTH, **sched)
            )
        else:
            schedulers.append(PARAM_SCHEDULERS.build({**sched, "optimizer": optimizer}))
    return schedulers


def _ours(model: nn.Module, **overrides):  # noqa: ANN202
    cfg = gcnet_d2.get_config(ROW)
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    optimizer = build_optimizer(cfg, model)
    return optimizer, build_lr_scheduler(cfg, optimizer)


def _set_grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _train_steps(model: nn.Module, step_fn, steps: int) -> list[torch.Tensor]:  # noqa: ANN001
    for i in range(steps):
        _set_grads(model, i)
        step_fn()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.usefixtures("mmdet")
def test_sgd_steps_equal_mmdetection() -> None:
    """Three SGD steps in the warm-up (momentum, weight decay on norms and biases)."""
    cfg = _mmdet_cfg()
    theirs_model, ours_model = _toy_model(), _toy_model()
    wrapper = _mmdet_optimizer(theirs_model, cfg)
    their_scheds = _mmdet_schedulers(wrapper.optimizer, cfg)

    def their_step() -> None:
        wrapper.step()
        for s in their_scheds:
            s.step()

    optimizer, scheduler = _ours(ours_model)

    def our_step() -> None:
        optimizer.step()
        scheduler.step()

    theirs = _train_steps(theirs_model, their_step, 3)
    ours = _train_steps(ours_model, our_step, 3)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)

    # The comparison sees weight decay on norms and biases: without it the parameters differ.
    no_decay_model = _toy_model()
    optimizer, scheduler = _ours(
        no_decay_model, **{"SOLVER.WEIGHT_DECAY_NORM": "0.0", "SOLVER.WEIGHT_DECAY_BIAS": "0.0"}
    )
    no_decay = _train_steps(no_decay_model, our_step, 3)
    assert any((a - b).abs().max() > 1e-11 for a, b in zip(no_decay, theirs, strict=True))


@pytest.mark.usefixtures("mmdet")
def test_learning_rate_equals_mmdetection_every_iteration() -> None:
    cfg = _mmdet_cfg()
    wrapper = _mmdet_optimizer(_toy_model(), cfg)
    their_scheds = _mmdet_schedulers(wrapper.optimizer, cfg)
    optimizer, scheduler = _ours(_toy_model())
    ours_cfg = gcnet_d2.get_config(ROW)
    assert ours_cfg.SOLVER.MAX_ITER == 12 * EPOCH_LENGTH == cfg.train_cfg.max_epochs * EPOCH_LENGTH

    def lr(opt: torch.optim.Optimizer) -> float:
        (value,) = {g["lr"] for g in opt.param_groups}
        return value

    seen = {}
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() before optimizer.step()
        for it in range(ours_cfg.SOLVER.MAX_ITER):
            ours, theirs = lr(optimizer), lr(wrapper.optimizer)
            worst = max(worst, abs(ours - theirs) / theirs)
            if it in CHECKED_ITERS:
                seen[it] = (ours, theirs)
            scheduler.step()
            for s in their_scheds:
                s.step()
    assert worst < 1e-9, worst
    expected = {
        0: 0.02 * 0.001,
        1: 0.02 * (0.001 + 0.999 / 499),
        250: 0.02 * (0.001 + 0.999 * 250 / 499),
        499: 0.02,
        500: 0.02,
        58631: 0.02,
        58632: 0.002,
        80619: 0.0002,
        87947: 0.0002,
    }
    for it, value in expected.items():
        assert seen[it] == pytest.approx((value, value), rel=1e-9), it


def test_lazy_config_schedule_equals_the_yaml_one() -> None:
    from detectron2.config import instantiate

    lazy = instantiate(gcnet_d2.get_config(ROW.replace(".yaml", ".py")).lr_multiplier)
    optimizer, scheduler = _ours(_toy_model())
    max_iter = gcnet_d2.get_config(ROW).SOLVER.MAX_ITER
    for it in CHECKED_ITERS:
        scheduler.last_epoch = it - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.step()
        (lr,) = {g["lr"] for g in optimizer.param_groups}
        assert lr == pytest.approx(0.02 * lazy(it / max_iter), rel=1e-12), it
