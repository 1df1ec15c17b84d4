"""``train_net.py`` with test probes added to the trainer, driven by environment variables.

- ``GCNET_TEST_PAUSE_AT=N`` and ``GCNET_TEST_READY=path``: after iteration N (and its hooks,
  checkpointing included) touch ``path`` and block, waiting to be killed by the test.
- ``GCNET_TEST_SIGNAL_AT=N`` (on rank ``GCNET_TEST_SIGNAL_RANK``, default 0) and
  ``GCNET_TEST_READY=path``: after iteration N touch ``path`` and wait until this process has
  received a stop signal (SIGUSR1 / SIGTERM) or ``GCNET_TEST_GO`` names a file that exists,
  then go on; ``GCNET_TEST_SIGNAL_IN_EVAL=1``: the same inside the first evaluation. Not in a
  restarted job (``SLURM_RESTART_COUNT``).
- ``GCNET_TEST_DUMP_BN=1``: after training, every process saves the running statistics of its
  batch-norm layers to ``OUTPUT_DIR/bn_rank{rank}.pt`` (with the layer type names).

Everything else is ``train_net.cli``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
from detectron2.engine import HookBase  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from torch import nn  # noqa: E402

import train_net  # noqa: E402
from gcnet_d2.cluster import signals  # noqa: E402
from gcnet_d2.engine import GCNetTrainer  # noqa: E402


class PauseAfter(HookBase):
    def __init__(self, iteration: int, ready: str) -> None:
        self.iteration, self.ready = iteration, ready

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            open(self.ready, "w").close()
            while True:  # wait for SIGKILL
                time.sleep(0.5)


def wait_for_a_signal() -> None:
    """Touch GCNET_TEST_READY, then wait (in Python, so the handler runs) for a stop signal
    or the GCNET_TEST_GO file."""
    open(os.environ["GCNET_TEST_READY"], "w").close()
    go = os.environ.get("GCNET_TEST_GO")
    while not signals.received() and not (go and os.path.exists(go)):
        time.sleep(0.02)


class WaitForSignalAfter(HookBase):
    def __init__(self, iteration: int, rank: int) -> None:
        self.iteration, self.rank = iteration, rank

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration and comm.get_rank() == self.rank:
            wait_for_a_signal()


class DumpBatchNorm(HookBase):
    def after_train(self) -> None:
        model = self.trainer.model
        model = getattr(model, "module", model)
        stats = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                stats[name] = {
                    "type": type(m).__name__,
                    "running_mean": m.running_mean.clone(),
                    "running_var": m.running_var.clone(),
                }
        out = os.path.join(self.trainer.cfg.OUTPUT_DIR, f"bn_rank{comm.get_rank()}.pt")
        torch.save(stats, out)


_build_hooks = GCNetTrainer.build_hooks


def build_hooks(self: GCNetTrainer) -> list[HookBase]:
    hooks = _build_hooks(self)
    if os.environ.get("GCNET_TEST_PAUSE_AT"):
        hooks.append(
            PauseAfter(int(os.environ["GCNET_TEST_PAUSE_AT"]), os.environ["GCNET_TEST_READY"])
        )
    if os.environ.get("GCNET_TEST_SIGNAL_AT") and _first_start:
        rank = int(os.environ.get("GCNET_TEST_SIGNAL_RANK", "0"))
        hooks.append(WaitForSignalAfter(int(os.environ["GCNET_TEST_SIGNAL_AT"]), rank))
    if os.environ.get("GCNET_TEST_DUMP_BN"):
        hooks.append(DumpBatchNorm())
    return hooks


_first_start = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
_test = GCNetTrainer.test.__func__
_evaluations = []


def test_waiting_for_a_signal(cls, cfg, model, evaluators=None):  # noqa: ANN001, ANN202
    if not _evaluations and _first_start:
        _evaluations.append(1)
        wait_for_a_signal()
    return _test(cls, cfg, model, evaluators)


GCNetTrainer.build_hooks = build_hooks
if os.environ.get("GCNET_TEST_SIGNAL_IN_EVAL"):
    GCNetTrainer.test = classmethod(test_waiting_for_a_signal)

if __name__ == "__main__":
    train_net.cli(sys.argv[1:])
