"""AMP training (gcnet_d2.amp.AutocastTrainer) of the three families on the CPU: bfloat16
autocast, losses close to float32's from the same weights and data, everything that is
trained stays float32."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from gcnet_d2 import fast
from gcnet_d2.amp import AutocastTrainer, autocast_dtype
from tests.testing import (
    FAMILIES,
    calibrate_norms,
    randomize_context_blocks,
    randomize_offsets,
    sample_image,
    tiny_cfg,
)

# Every proposal is sampled (32 per image <= 512), so bf16 and fp32 train on the same RoIs
# unless the RPN's top 32 differ.
OPTS = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "512",
]  # fmt: skip
H, W = 64, 96


def example(seed: int) -> dict:
    """A 64 x 96 image with three boxes (one per class) and their rectangle masks."""
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(3):
        x0, y0 = (
            int(torch.randint(0, 50, (1,), generator=g)),
            int(torch.randint(0, 30, (1,), generator=g)),
        )
        w, h = (
            20 + int(torch.randint(0, 25, (1,), generator=g)),
            15 + int(torch.randint(0, 18, (1,), generator=g)),
        )
        boxes.append([x0, y0, x0 + w, y0 + h])
    instances = Instances((H, W))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.gt_classes = torch.tensor([0, 1, 2])
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    instances.gt_masks = BitMasks(masks)
    return {
        "image": sample_image(H, W, seed).float(),
        "instances": instances,
        "height": H,
        "width": W,
    }


def family_model(family: str) -> torch.nn.Module:
    """The family's tiny model (X-101 as X-50) with non-zero GC blocks and DCN offsets and
    calibrated norms, with the speed-ups, in training mode."""
    cfg = tiny_cfg(FAMILIES[family], *OPTS, depth=50)
    torch.manual_seed(0)
    model = build_model(cfg)
    randomize_context_blocks(model, 0, std=0.05)
    randomize_offsets(model, 0)
    calibrate_norms(model, partial(model, [{"image": sample_image(H, W, 0).float()}]))
    return fast.apply(model, cfg).train()


def total_loss(model: torch.nn.Module, batch: list[dict], seed: int, bf16: bool) -> float:
    torch.manual_seed(seed)  # the same anchor and RoI samples
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return float(sum(v.float() for v in model(batch).values()))


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_training_steps_match_fp32(family: str) -> None:
    """Two AutocastTrainer steps, whose forward runs in bfloat16. Before each, the float32
    loss of the same weights and batch: the bfloat16 loss of the step is within 8% of it
    (measured on this CPU: 0.4-0.8% at the first step, 2.2-3.7% at the second). Losses and
    gradients finite; parameters, gradients and momentum float32.

    Only same-weights comparisons: this random tiny network is chaotic (a 0.2% change of
    the input pixels moves its float32 gradients by 38-132%), so two trainings that differ
    by any rounding part after one step.
    """
    model = family_model(family)
    batches = [[example(2 * i + 1), example(2 * i + 2)] for i in range(2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    trainer = AutocastTrainer(model, batches, optimizer)
    assert trainer.dtype == torch.bfloat16 and trainer.grad_scaler is None
    feature_dtypes = set()
    model.backbone.register_forward_hook(
        lambda m, args, out: feature_dtypes.update(f.dtype for f in out.values())
    )
    with EventStorage(0) as storage:
        trainer.storage = storage
        for step, batch in enumerate(batches):
            reference = total_loss(model, batch, seed=step, bf16=False)
            torch.manual_seed(step)
            trainer.iter = storage.iter = step
            feature_dtypes.clear()
            trainer.run_step()
            assert feature_dtypes == {torch.bfloat16}
            got = storage.history("total_loss").latest()
            assert torch.isfinite(torch.tensor(got))
            assert abs(got - reference) <= 0.08 * reference, (step, got, reference)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(g.dtype == torch.float32 for g in grads)
            assert all(torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = [s["momentum_buffer"] for s in optimizer.state.values()]
    assert state and all(b.dtype == torch.float32 for b in state)


@pytest.mark.slow
def test_bf16_step_is_the_fp32_step_up_to_rounding() -> None:
    """The trainer's autocast is what differs from SimpleTrainer: with autocast disabled
    (dtype float32) one step gives SimpleTrainer's parameters exactly."""
    model = family_model("gc_mask")
    batch = [[example(1), example(2)]]
    after = []
    for trainer_class, kwargs in ((SimpleTrainer, {}), (AutocastTrainer, {"dtype": torch.float32})):
        m = copy.deepcopy(model)
        trainer = trainer_class(m, batch, torch.optim.SGD(m.parameters(), lr=1e-2), **kwargs)
        with EventStorage(0) as storage:
            trainer.storage = storage
            torch.manual_seed(0)
            trainer.run_step()
        after.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(after[0], after[1])


def test_autocast_dtype_and_grad_scaler_state() -> None:
    """float16 (with a grad scaler, whose state is checkpointed) on CUDA, bfloat16 on the CPU."""
    assert autocast_dtype("cuda") == torch.float16
    assert autocast_dtype("cpu") == torch.bfloat16
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    trainer = AutocastTrainer(model, [], opt, grad_scaler=scaler)
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] == 128.0
    other = AutocastTrainer(model, [], opt, grad_scaler=torch.amp.GradScaler("cpu"))
    other.load_state_dict(state)
    assert other.grad_scaler.get_scale() == 128.0
    assert "grad_scaler" not in AutocastTrainer(model, [], opt).state_dict()
