"""``lr_multiplier`` configs: linear warm-up, then the LR times ``gamma`` at each step."""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def step_schedule(
    max_iter: int,
    steps: tuple[int, ...],
    *,
    gamma: float = 0.1,
    warmup_iters: int = 500,
    warmup_factor: float = 0.001,
):  # noqa: ANN201 - a LazyCall config
    """The LR multiplier of a YAML config's ``WarmupMultiStepLR`` with these SOLVER values:
    ``warmup_iters`` of linear warm-up from ``warmup_factor``, x ``gamma`` at each step."""
    steps = [s for s in steps if s <= max_iter]
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=max_iter,
        ),
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


# 1x: 12 epochs of 16 images over COCO train2017 (117,266 images with annotations):
# 7,329 iterations per epoch, lr x0.1 after epochs 8 and 11.
# Warm-up reaching 1x at iteration 499 as mmdetection 3.x's LinearLR(end=500) (2.x: 500).
lr_multiplier_1x = step_schedule(87948, (58632, 80619), warmup_iters=499)
