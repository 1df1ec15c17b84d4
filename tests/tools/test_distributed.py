"""Multi-process training on the CPU (gloo): SyncBN really synchronises, evaluation gathers.

``train_net.py --num-gpus 2`` without CUDA starts two CPU processes over gloo. The unit test
checks the SyncBN layer gcnet_d2 builds on the CPU (detectron2's NaiveSyncBatchNorm) against
the statistics of the union of both processes' batches, with plain BN as the control that
does not synchronise. The end-to-end test trains a syncbn-backbone GC config for a few
iterations in two processes and compares every process's BN statistics afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.testing import (
    HOOKED,
    SYNCBN_GC,
    TINY_OPTS,
    free_port,
    python_env,
    run_python,
    synthetic_root,
)

CHANNELS = 4


def _rank_batch(rank: int) -> torch.Tensor:
    """Different data on each process: other samples, other mean and spread."""
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(3, CHANNELS, 5, 6, generator=g) * (1.0 + rank) + 3.0 * rank


def _bn_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        from detectron2.layers import get_norm

        from gcnet_d2.layers import resolve_norm

        results = {}
        for name in ("SyncBN", "BN"):
            norm = get_norm(resolve_norm(name, "cpu"), CHANNELS).train()
            x = _rank_batch(rank).requires_grad_()
            y = norm(x)
            y.square().sum().backward()  # the statistics' all-reduce is differentiable
            results[name] = {
                "type": type(norm).__name__,
                "running_mean": norm.running_mean.clone(),
                "running_var": norm.running_var.clone(),
                "y": y.detach(),
                "x_grad": x.grad.clone(),
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_syncbn_statistics_are_those_of_the_union(tmp_path: Path):
    mp.spawn(_bn_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    union = torch.cat([_rank_batch(0), _rank_batch(1)])
    mean = union.mean(dim=(0, 2, 3))
    var = union.var(dim=(0, 2, 3), unbiased=False)
    sync0, sync1 = r0["SyncBN"], r1["SyncBN"]
    assert sync0["type"] == "NaiveSyncBatchNorm"
    for r in (sync0, sync1):
        torch.testing.assert_close(r["running_mean"], 0.1 * mean)  # momentum 0.1 from zeros
        torch.testing.assert_close(r["running_var"], 0.9 + 0.1 * var)
    torch.testing.assert_close(sync0["running_mean"], sync1["running_mean"], rtol=0, atol=0)
    expected_y0 = (_rank_batch(0) - mean[None, :, None, None]) / torch.sqrt(
        var[None, :, None, None] + 1e-5
    )
    torch.testing.assert_close(sync0["y"], expected_y0, rtol=1e-4, atol=1e-5)
    # Gradients flow through the shared statistics: each process gets its part of the
    # gradient of BN over the union (with the loss summed over both processes).
    u = union.clone().requires_grad_()
    torch.nn.functional.batch_norm(u, None, None, training=True).square().sum().backward()
    torch.testing.assert_close(sync0["x_grad"], u.grad[:3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sync1["x_grad"], u.grad[3:], rtol=1e-4, atol=1e-5)

    # Control: plain BN keeps per-process statistics, so the check above is not vacuous.
    assert not torch.allclose(r0["BN"]["running_mean"], r1["BN"]["running_mean"])


@pytest.mark.slow
def test_train_net_two_cpu_processes_syncbn_gc_config(tmp_path_factory, tmp_path: Path):
    out = tmp_path / "out"
    argv = [
        HOOKED, "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
        "--config-file", SYNCBN_GC,
        "OUTPUT_DIR", str(out),
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "DATASETS.TRAIN", "('gcnet_synthetic_train',)",
        "DATASETS.TEST", "('gcnet_synthetic_val',)",
        "SOLVER.MAX_ITER", "3",
        "SOLVER.IMS_PER_BATCH", "4",  # 2 images per process
        "SOLVER.BASE_LR", "0.002",
        "SOLVER.WARMUP_ITERS", "2",
        *TINY_OPTS,
    ]  # fmt: skip
    env = python_env(synthetic_root(tmp_path_factory), GCNET_TEST_DUMP_BN="1")
    proc = run_python(argv, env, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    log0 = (out / "log.txt").read_text()
    log1 = (out / "log.txt.rank1").read_text()
    assert "World size: 2" in log0 and "Rank of current process: 1. World size: 2" in log1

    # SyncBN statistics are identical in both processes after training on different images
    # (detectron2 does not broadcast buffers: with plain BN they would differ).
    bn0 = torch.load(out / "bn_rank0.pt", weights_only=True)
    bn1 = torch.load(out / "bn_rank1.pt", weights_only=True)
    synced = [name for name, s in bn0.items() if s["type"] == "NaiveSyncBatchNorm"]
    assert len(synced) >= 30  # the trained (unfrozen) backbone norms
    for name in synced:
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(bn0[name][key], bn1[name][key], rtol=1e-6, atol=1e-7)
        assert bn0[name]["running_mean"].abs().sum() > 0  # they did update

    # Evaluation ran on both processes (6 of the 12 val images each) and rank 0 gathered all.
    assert "Start inference on 6 batches" in log0 and "Start inference on 6 batches" in log1
    predictions = torch.load(out / "inference" / "instances_predictions.pth", weights_only=True)
    assert sorted(p["image_id"] for p in predictions) == list(range(1, 13))
    results = json.loads((out / "final_results.json").read_text())
    assert {"bbox", "segm"} <= set(results)
