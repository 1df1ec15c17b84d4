"""``AutocastTrainer``: mixed-precision training on the model's own device, CUDA or CPU.

``SOLVER.AMP.ENABLED True`` (YAML, ``train_net.py``) and ``train.amp.enabled=True``
(LazyConfig, ``lazy_train_net.py``) train with it. detectron2's ``AMPTrainer`` asserts CUDA;
this trainer takes the autocast of the device the model's parameters are on:

- CUDA: float16 autocast with a ``GradScaler`` (float16's 5-bit exponent underflows small
  gradients; the scaler multiplies the loss, unscales the gradients before the optimizer
  step, skips steps whose gradients overflowed and keeps its scale in checkpoints);
- CPU: bfloat16 autocast, no scaler (bfloat16 has float32's exponent range).

Parameters, gradients and optimizer state stay float32 (autocast casts copies of the
weights inside the forward). The scores and box / mask logits that the losses read, and
RoIAlign's inputs, stay float32 (:func:`gcnet_d2.precision.keep_float32_parts`); the losses
are summed in float32. docs/precision.md says what runs in which precision and why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from detectron2.engine import SimpleTrainer
from torch import nn

from .precision import keep_float32_parts


def autocast_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype of mixed-precision training on ``device_type``: float16 on CUDA,
    bfloat16 elsewhere (the CPU's)."""
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def model_device_type(model: nn.Module) -> str:
    """``"cuda"``, ``"cpu"``, ...: where ``model``'s first parameter lives."""
    param = next(model.parameters(), None)
    return "cpu" if param is None else param.device.type


class AutocastTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with the forward under the model device's autocast.

    Takes ``AMPTrainer``'s place in ``DefaultTrainer`` (:class:`gcnet_d2.engine.GCNetTrainer`)
    and in ``lazy_train_net.py``. ``dtype`` overrides :func:`autocast_dtype`; a float16 run
    gets a ``torch.amp.GradScaler`` unless ``grad_scaler`` is given.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader,  # noqa: ANN001 - any iterable of batches
        optimizer: torch.optim.Optimizer,
        *,
        dtype: torch.dtype | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.device_type = model_device_type(model)
        self.dtype = dtype or autocast_dtype(self.device_type)
        if grad_scaler is None and self.dtype == torch.float16:
            grad_scaler = torch.amp.GradScaler(self.device_type)
        self.grad_scaler = grad_scaler
        keep_float32_parts(model)

    def run_step(self) -> None:
        if not self.model.training:
            raise RuntimeError("AutocastTrainer: the model was switched to eval mode")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.dtype):
            outputs = self.model(data)
        loss_dict, total = _float32_losses(outputs)
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        scaler = self.grad_scaler
        (total if scaler is None else scaler.scale(total)).backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)  # unscales first: gradient clipping sees true values
            scaler.update()

    def state_dict(self) -> dict:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _float32_losses(
    outputs: torch.Tensor | Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(loss dict, their float32 sum)`` of a model's training outputs."""
    losses = {"total_loss": outputs} if isinstance(outputs, torch.Tensor) else dict(outputs)
    losses = {k: v.float() for k, v in losses.items()}
    return losses, sum(losses.values())


__all__ = ["AutocastTrainer", "autocast_dtype", "model_device_type"]
