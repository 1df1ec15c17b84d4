"""Clusters: torchrun / SLURM launch, a clear stop when a machine is lost, automatic resume.

Measured as a cluster user would, on one host (127.0.0.1, gloo, the tiny quick-start model,
4 iterations, one image per process):

- two "machines" (``--num-machines 2 --machine-rank 0/1``) and ``torchrun --nproc-per-node 2``
  train to exactly the weights of ``--num-gpus 2`` (one reference run, shared);
- SIGKILL of either machine: the other exits within 60 s (measured: a few seconds) with one
  last line naming the lost rank, the iteration, the last complete checkpoint and the
  command that continues; every checkpoint on disk is complete; running that command on both
  machines ends with the reference weights;
- ``torchrun --max-restarts 1``: a worker SIGKILLed after the checkpoint of iteration 1 makes
  torchrun restart the group, which resumes by itself and ends with the reference weights;
- :func:`gcnet_d2.cluster.launch.launch` under torchrun and a simulated ``srun`` step gives
  detectron2's comm helpers the right ranks, sizes and local groups; the heartbeats find a
  peer lost while nobody is in a collective, wait for a checkpoint being written, name the
  master when it is the one lost, and take no process that merely finished first for lost.

Every child runs in its own session with a timeout and is killed with its group on failure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gcnet_d2.cluster.environment import (
    LauncherEnv,
    detect_launcher,
    restarted,
    slurm_default_port,
)
from gcnet_d2.cluster.launch import launch
from gcnet_d2.cluster.peers import EXIT_PEER_STOPPED, is_communication_error
from gcnet_d2.cluster.resume import _with_resume
from gcnet_d2.errors import LaunchError
from tests.testing import LAZY_ROW, LAZY_TINY_OPTS, PYTHON, REPO, free_port
from tests.tools.cluster_runs import (
    MAX_ITER,
    TORCHRUN,
    Children,
    assert_same_weights,
    child_env,
    last_line,
    scontrol_calls,
    srun_env,
    stand_in_scontrol,
    train_argv,
    weights,
)

# --------------------------------------------------------------------------------------------
# unit tests: launcher environments, the continue command
# --------------------------------------------------------------------------------------------
TORCHRUN_ENV = {
    "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
    "MASTER_ADDR": "node01", "MASTER_PORT": "29400",
}  # fmt: skip
SRUN_ENV = {
    "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "16",
    "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "123456",
}  # fmt: skip


@pytest.fixture
def scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in ``scontrol`` on PATH, expanding any list to gpu07 gpu08."""
    for key, value in stand_in_scontrol(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SCONTROL_HOSTNAMES", "gpu07 gpu08")
    return tmp_path


def test_detect_torchrun_and_slurm(scontrol: Path):
    assert detect_launcher({}) is None
    expected = LauncherEnv("torchrun", 9, 16, 1, 8, "node01", 29400)
    assert detect_launcher(TORCHRUN_ENV) == expected
    assert (expected.machine_rank, expected.num_machines) == (1, 2)

    slurm = detect_launcher(SRUN_ENV)  # the master: the first host scontrol lists
    assert slurm == LauncherEnv("slurm", 9, 16, 1, 8, "gpu07", slurm_default_port("123456"))
    assert scontrol_calls(scontrol, "show") == ["show hostnames gpu[07-08]"]
    assert slurm_default_port("123456") == slurm_default_port(123456) == 20000 + 123456 % 20000
    assert detect_launcher({**SRUN_ENV, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}) == (
        LauncherEnv("slurm", 9, 16, 1, 8, "10.0.0.1", 1234)
    )
    assert len(scontrol_calls(scontrol, "show")) == 1  # MASTER_ADDR given: no scontrol
    # torchrun inside an srun step: torchrun's variables describe the worker
    assert detect_launcher({**SRUN_ENV, **TORCHRUN_ENV}).launcher == "torchrun"
    # the batch script itself (SLURM_PROCID=0 and SLURM_NTASKS, but not an srun step)
    batch = {k: v for k, v in SRUN_ENV.items() if not k.startswith("SLURM_STEP_")}
    assert detect_launcher({**batch, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}) is None
    assert detect_launcher({**TORCHRUN_ENV, "GCNET_LAUNCHER": "spawn"}) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**SRUN_ENV, "SLURM_STEP_TASKS_PER_NODE": "8,4", "SLURM_STEP_NUM_TASKS": "12"},
         "same number of processes on every machine"),
        ({**SRUN_ENV, "SLURM_STEP_NODELIST": "gpu[07-"},
         "scontrol show hostnames gpu[07- gave no host (scontrol: error: Invalid hostlist: "
         "gpu[07- (exit status 1)); set MASTER_ADDR"),
        ({**TORCHRUN_ENV, "RANK": "x"}, "RANK='x' is not an integer"),
        ({k: v for k, v in TORCHRUN_ENV.items() if k != "MASTER_PORT"}, "MASTER_PORT not"),
    ],
)  # fmt: skip
def test_unusable_launcher_environments_are_named(
    env: dict[str, str], message: str, scontrol: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("SCONTROL_HOSTNAMES")  # the stand-in refuses the list, as scontrol does
    with pytest.raises(LaunchError, match=re.escape(message)):
        detect_launcher(env)


def test_flags_that_contradict_the_launcher_are_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # launch() sets it if unset
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(LaunchError, match=r"--num-gpus 4 asks for another layout"):
        launch(lambda: None, 4)  # fails before any process group is made
    monkeypatch.setenv("RANK", "2")  # local rank 1 of 8 cannot be rank 2
    with pytest.raises(LaunchError, match="not numbered machine by machine"):
        launch(lambda: None, 1)


def test_restart_detection_and_continue_command():
    assert restarted({}) is None
    assert restarted({"TORCHELASTIC_RESTART_COUNT": "0"}) is None
    assert "torchrun restart 1" in restarted({"TORCHELASTIC_RESTART_COUNT": "1"})
    assert "SLURM restart 2" in restarted({"SLURM_RESTART_COUNT": "2"})
    # --resume goes before the trailing KEY VALUE overrides (argparse's remainder)
    assert _with_resume(["train_net.py", "--config-file", "c.yaml", "SOLVER.MAX_ITER", "9"]) == [
        "train_net.py", "--resume", "--config-file", "c.yaml", "SOLVER.MAX_ITER", "9",
    ]  # fmt: skip
    assert _with_resume(["t.py", "--resume", "A", "1"]) == ["t.py", "--resume", "A", "1"]


def test_a_restarted_job_resumes(monkeypatch: pytest.MonkeyPatch, capsys):
    import argparse

    from gcnet_d2.cluster.resume import resume_policy

    args = argparse.Namespace(resume=False, eval_only=False)
    assert not resume_policy(args, "train_net.py").resume
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_policy(args, "train_net.py").resume
    assert not args.resume  # the policy decides; the command line's arguments stay as given
    assert "train_net.py: torchrun restart 1" in capsys.readouterr().out
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued SLURM job
    assert resume_policy(args, "train_net.py").resume
    eval_only = argparse.Namespace(resume=False, eval_only=True)
    assert not resume_policy(eval_only, "train_net.py").resume


def test_time_based_checkpoints(monkeypatch: pytest.MonkeyPatch):
    """--checkpoint-minutes: a checkpoint once that long has passed since the last one,
    named as the periodic ones; the periodic ones restart the clock."""
    from types import SimpleNamespace

    from gcnet_d2.cluster import ClusterHook, hook

    clock = [0.0]
    monkeypatch.setattr(hook.time, "monotonic", lambda: clock[0])
    saved = []
    checkpointer = SimpleNamespace(save=lambda name, **kw: saved.append((name, kw)))
    sync = ClusterHook(checkpointer, period=5, output_dir="out", minutes=2)
    sync.trainer = SimpleNamespace(iter=0, max_iter=20)
    sync.before_train()
    for it, minutes in enumerate([1, 2.5, 3, 4, 5, 6, 6.5, 9]):
        clock[0] = minutes * 60
        sync.trainer.iter = it
        sync.after_step()
    sync.after_train()  # back to the default signal handlers
    # iteration 1 (2.5 min), 4 is periodic (5 min, not saved here), 7 (9 min >= 5 + 2)
    assert saved == [("model_0000001", {"iteration": 1}), ("model_0000007", {"iteration": 7})]


def test_collective_errors_are_recognised():
    gloo = RuntimeError("[pair.cc:545] Read error [127.0.0.1]:37595: Connection reset by peer")
    assert is_communication_error(gloo)
    assert is_communication_error(torch.distributed.DistNetworkError("closed"))
    wrapped = ValueError("while training")
    wrapped.__cause__ = gloo
    assert is_communication_error(wrapped)
    assert not is_communication_error(ZeroDivisionError("division by zero"))


def test_documented_cluster_commands_parse():
    from detectron2.engine import default_argument_parser

    import train_net
    from gcnet_d2.cluster import add_cluster_arguments
    from tests.testing import documented_commands

    doc = (REPO / "docs" / "clusters.md").read_text()
    assert "torchrun" in doc and "sbatch" in doc and "srun" in doc
    commands = documented_commands("train_net.py")
    cluster = [c for c in commands if "--resume" in c and "--config-file" in c]
    assert len(cluster) >= 2, commands
    parser = add_cluster_arguments(default_argument_parser())
    for argv in cluster:
        args = parser.parse_args(argv)
        assert args.resume and os.path.isfile(REPO / args.config_file), argv
    assert train_net.cli  # the parser above is train_net.py's


# --------------------------------------------------------------------------------------------
# launch() in real processes: comm helpers, heartbeats
# --------------------------------------------------------------------------------------------
PROBE = r"""
import json, os, signal, sys, time
from detectron2.utils import comm
import torch.distributed as dist
from torch import nn
from gcnet_d2.cluster import peers
from gcnet_d2.cluster.launch import launch


def main(mode, out, peer_timeout):
    rank = comm.get_rank()
    record = {
        "rank": rank, "world": comm.get_world_size(), "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(), "backend": str(dist.get_backend()),
        "local_group": dist.get_process_group_ranks(comm.get_local_process_group()),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    peers.progress.iteration, peers.progress.output_dir = 7, out
    comm.synchronize()
    if mode.startswith("kill"):  # then nobody is in a collective: only heartbeats tell
        if rank == int(mode[4:]):
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == 0:  # a checkpoint write longer than the detection: it must complete
            import torch
            from gcnet_d2.checkpoint import GCNetCheckpointer

            real_save = torch.save
            def slow_save(obj, f):
                time.sleep(peer_timeout + 3)
                real_save(obj, f)
            torch.save = slow_save
            checkpointer = GCNetCheckpointer(nn.Linear(2, 2), save_dir=out)
            checkpointer.write_guard = peers.checkpoint_write  # as ClusterHook hands it
            checkpointer.save("model_0000007")
        time.sleep(120)
        sys.exit(5)
    if mode.startswith("late"):  # one process ends well after the other
        time.sleep(3 * peer_timeout if rank == int(mode[4:]) else 0)


if __name__ == "__main__":
    mode, out, gpus, machines, machine, url, peer_timeout = sys.argv[1:]
    launch(main, int(gpus), num_machines=int(machines), machine_rank=int(machine),
           dist_url=url, args=(mode, out, float(peer_timeout)),
           peer_timeout=float(peer_timeout), program="probe.py")
"""


SRUN_PROBE = ["1", "1", "0", "auto"]  # --num-gpus 1, the launcher's layout


def write_probe(folder: Path) -> str:
    path = folder / "probe.py"
    path.write_text(PROBE)
    return str(path)


def read_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


@pytest.mark.slow
def test_comm_helpers_under_torchrun_and_srun(tmp_path: Path, children: Children):
    probe = write_probe(tmp_path)
    # torchrun, one machine x 2 processes
    out = tmp_path / "torchrun"
    out.mkdir()
    argv = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", probe,
            "comm", str(out), "1", "1", "0", "auto", "30"]  # fmt: skip
    proc = children.start("torchrun", argv, child_env())
    assert children.wait(proc, 120) == 0, children.tail(proc)
    assert read_records(out) == [
        {"rank": r, "world": 2, "local_rank": r, "local_size": 2, "backend": "gloo",
         "local_group": [0, 1]} for r in (0, 1)
    ]  # fmt: skip

    # srun steps: 2 nodes x 1 task (first host of the nodelist is the master), then the same
    # with --num-gpus 2: each task is a machine spawning 2 processes (4 in all)
    for gpus, layout in (("1", [[0], [1]]), ("2", [[0, 1], [0, 1], [2, 3], [2, 3]])):
        out = tmp_path / f"srun{gpus}"
        out.mkdir()
        port, procs = free_port(), []
        for task in (0, 1):
            argv = [PYTHON, probe, "comm", str(out), gpus, "1", "0", "auto", "30"]
            procs.append(children.start(f"srun{gpus}_{task}", argv, srun_env(task, port, out)))
        for proc in procs:
            assert children.wait(proc, 120) == 0, children.tail(proc)
        records = read_records(out)
        world = len(layout)
        assert [r["rank"] for r in records] == list(range(world))
        assert {r["world"] for r in records} == {world}
        assert [r["local_group"] for r in records] == layout
        assert [r["local_rank"] for r in records] == [g.index(i) for i, g in enumerate(layout)]
        assert scontrol_calls(out, "show") == ["show hostnames localhost,gpu[02]"] * 2


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_heartbeats_find_a_peer_lost_outside_collectives(
    tmp_path: Path, children: Children, victim: int
):
    """Nobody is in a collective (rank 0 is writing a checkpoint): the heartbeats alone find
    the lost process; the survivor lets the checkpoint complete, then reports. (Two srun
    tasks: one process each, the store in rank 0's.)"""
    probe, port, peer_timeout = write_probe(tmp_path), free_port(), 3
    procs = [
        children.start(
            f"task{task}",
            [PYTHON, probe, f"kill{victim}", str(tmp_path), *SRUN_PROBE, str(peer_timeout)],
            srun_env(task, port, tmp_path),
        )
        for task in (0, 1)
    ]
    survivor = procs[1 - victim]
    started = time.monotonic()
    assert children.wait(survivor, 90) == EXIT_PEER_STOPPED, children.tail(survivor)
    took = time.monotonic() - started
    print(f"task {1 - victim} stopped {took:.1f} s after its start, task {victim} killed itself")
    line = last_line(children.output(survivor))
    host = socket.gethostname()
    if victim == 1:
        assert re.fullmatch(
            rf"probe\.py: error \(rank 0\): lost rank 1 \(machine 1, host {re.escape(host)}\): "
            rf"no heartbeat for \d+ s \(process killed or machine down\) at iteration 7; "
            rf"last complete checkpoint: {re.escape(str(tmp_path / 'model_0000007.pth'))}; "
            rf"to continue: srun .*probe\.py --resume kill1 .*",
            line,
        ), line
        assert weights(tmp_path / "model_0000007.pth")["weight"].shape == (2, 2)
    else:
        assert line.startswith(
            "probe.py: error (rank 1): lost rank 0 (the master, machine 0, host localhost): "
            f"the job's store at localhost:{port} stopped answering"
        ), line
        assert "at iteration 7; last complete checkpoint: none yet in" in line
    assert took < 60, took


@pytest.mark.slow
def test_a_process_that_finishes_first_is_not_lost(tmp_path: Path, children: Children):
    """Two jobs at once: in one rank 0 ends 6 s after rank 1 (which exits meanwhile), in the
    other rank 1 ends last (rank 0, which hosts the store, must wait for it)."""
    probe, procs = write_probe(tmp_path), []
    for late in (0, 1):
        out, port = tmp_path / f"late{late}", free_port()
        out.mkdir()
        for task in (0, 1):
            argv = [PYTHON, probe, f"late{late}", str(out), *SRUN_PROBE, "2"]
            procs.append(children.start(f"late{late}_task{task}", argv, srun_env(task, port, out)))
    for proc in procs:
        assert children.wait(proc, 90) == 0, children.tail(proc)
        assert "error" not in last_line(children.output(proc))


# --------------------------------------------------------------------------------------------
# training: equality, lost machine, automatic resume
# --------------------------------------------------------------------------------------------
TRAIN_PROBE = r'''
"""train_net.py with one probe: after iteration PROBE_AT (its hooks included) on rank
PROBE_RANK, on the first attempt only, either SIGKILL itself (PROBE_ACTION=kill) or touch
PROBE_READY and wait to be killed."""
import os, signal, sys, time
sys.path.insert(0, REPO_PATH)
from detectron2.engine import HookBase
from detectron2.utils import comm
import train_net
from gcnet_d2.engine import GCNetTrainer


class Probe(HookBase):
    def after_step(self):
        if ("PROBE_AT" not in os.environ
                or self.trainer.iter != int(os.environ["PROBE_AT"])
                or comm.get_rank() != int(os.environ["PROBE_RANK"])
                or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"):
            return
        if os.environ.get("PROBE_ACTION") == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        open(os.environ["PROBE_READY"], "w").close()
        while True:
            time.sleep(0.5)


_build_hooks = GCNetTrainer.build_hooks
GCNetTrainer.build_hooks = lambda self: [*_build_hooks(self), Probe()]

if __name__ == "__main__":
    train_net.cli(sys.argv[1:])
'''


def write_train_probe(folder: Path) -> str:
    path = folder / "train_probe.py"
    path.write_text(TRAIN_PROBE.replace("REPO_PATH", repr(str(REPO))))
    return str(path)


def two_machines(
    children: Children, script: str, out: Path, env: list[dict[str, str]], *flags: str
) -> list[subprocess.Popen]:
    url = f"tcp://127.0.0.1:{free_port()}"
    return [
        children.start(
            f"machine{m}_{len(children.procs)}",
            [
                PYTHON,
                *train_argv(
                    script,
                    out,
                    *flags,
                    "--num-machines",
                    "2",
                    "--machine-rank",
                    str(m),
                    "--dist-url",
                    url,
                ),
            ],
            env[m],
        )  # fmt: skip
        for m in (0, 1)
    ]


@pytest.mark.slow
def test_two_machines_equal_one_machine_with_two_processes(
    tmp_path: Path, children: Children, synth: str, reference: Path
):
    """Also with time-based checkpoints after every iteration (--checkpoint-minutes: rank 0's
    clock decides, broadcast to rank 1 each iteration): checkpointing changes nothing."""
    out = tmp_path / "out"
    env = [child_env(synth)] * 2
    for proc in two_machines(children, "train_net.py", out, env, "--checkpoint-minutes", "1e-6"):
        assert children.wait(proc, 300) == 0, children.tail(proc)
    assert_same_weights(reference, out / "model_final.pth")
    written = sorted(p.name for p in out.glob("model_*.pth"))
    assert written == [f"model_{i:07d}.pth" for i in range(MAX_ITER)] + ["model_final.pth"]


@pytest.mark.slow
def test_torchrun_equals_num_gpus_2(
    tmp_path: Path, children: Children, synth: str, reference: Path
):
    out = tmp_path / "out"
    argv = [*TORCHRUN, "--standalone", "--nproc-per-node", "2",
            *train_argv("train_net.py", out)]  # fmt: skip
    proc = children.start("torchrun", argv, child_env(synth))
    assert children.wait(proc, 300) == 0, children.tail(proc)
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    said = children.output(proc, "out")
    for rank in (0, 1):
        assert f"train_net.py: joining the process group of torchrun: rank {rank} of 2" in said
    assert_same_weights(reference, out / "model_final.pth")


@pytest.mark.slow
def test_lazy_train_net_joins_torchrun(tmp_path: Path, children: Children, synth: str):
    """lazy_train_net.py takes the same launcher path (measured by hand: its final weights
    under torchrun equal those of --num-gpus 2 too)."""
    out = tmp_path / "out"
    argv = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "lazy_train_net.py",
            "--config-file", LAZY_ROW, *LAZY_TINY_OPTS, f"train.output_dir={out}"]  # fmt: skip
    proc = children.start("torchrun", argv, child_env(synth))
    assert children.wait(proc, 300) == 0, children.tail(proc)
    said = children.output(proc, "out")
    for rank in (0, 1):
        assert f"lazy_train_net.py: joining the process group of torchrun: rank {rank} of 2" in said
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    assert (out / "model_final.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_lost_machine_stops_the_other_with_one_line_then_resume_continues(
    tmp_path: Path, children: Children, synth: str, reference: Path, victim: int
):
    out, ready = tmp_path / "out", tmp_path / "ready"
    probe_env = child_env(synth, PROBE_AT="2", PROBE_RANK=str(victim), PROBE_READY=str(ready))
    procs = two_machines(children, write_train_probe(tmp_path), out, [probe_env] * 2)
    deadline = time.monotonic() + 240
    while not ready.exists():
        for proc in procs:
            assert proc.poll() is None, children.tail(proc)
        assert time.monotonic() < deadline, "the probe never reached iteration 2"
        time.sleep(0.05)
    killed, survivor = procs[victim], procs[1 - victim]
    children.kill(killed)  # the whole machine: its launcher and its worker
    lost_at = time.monotonic()
    assert children.wait(survivor, 90) == EXIT_PEER_STOPPED, children.tail(survivor)
    took = time.monotonic() - lost_at
    print(f"machine {1 - victim} stopped {took:.1f} s after machine {victim} was killed")
    assert took < 60, took

    # One last line: the lost rank, the iteration, the last complete checkpoint, the command.
    line = last_line(children.output(survivor))
    checkpoint = out / "model_0000001.pth"
    who = "rank 1 (machine 1, host " if victim == 1 else "rank 0 (the master, machine 0, host "
    assert line.startswith(f"train_net.py: error (rank {1 - victim}): lost {who}"), line
    assert f" at iteration 3; last complete checkpoint: {checkpoint}; to continue: " in line
    command = line.split("; to continue: ", 1)[1]
    every = " (on every machine, each with its own --machine-rank)"
    assert command.endswith(every)
    argv = shlex.split(command.removesuffix(every))
    assert argv[:3] == [sys.executable, write_train_probe(tmp_path), "--resume"], argv

    # Every checkpoint on disk is complete; last_checkpoint names the one reported.
    assert (out / "last_checkpoint").read_text() == checkpoint.name
    for path in out.glob("model_*.pth"):
        assert weights(path)
    assert not (out / "model_final.pth").exists()

    # The reported command on both machines continues to the reference, whether the machine
    # lost was a worker's or the master's (rank 0, which hosted the store and wrote the
    # checkpoints).
    rank_at = argv.index("--machine-rank") + 1
    url_at = argv.index("--dist-url") + 1
    argv[url_at] = f"tcp://127.0.0.1:{free_port()}"
    resumed = []
    for m in (0, 1):
        argv[rank_at] = str(m)
        resumed.append(children.start(f"resumed{m}", list(argv), child_env(synth)))
    for proc in resumed:
        assert children.wait(proc, 300) == 0, children.tail(proc)
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 2" in log.rsplit("Command line arguments", 1)[1]
    assert_same_weights(reference, out / "model_final.pth")


@pytest.mark.slow
def test_torchrun_restarts_after_a_sigkill_and_resumes_exactly(
    tmp_path: Path, children: Children, synth: str, reference: Path
):
    """``--resume`` from the first start (nothing to resume: trains from scratch); rank 1
    SIGKILLs itself after iteration 2, when model_0000001.pth is complete; torchrun restarts
    the group, which continues from it with nobody acting."""
    out = tmp_path / "out"
    env = child_env(synth, PROBE_AT="2", PROBE_RANK="1",
                    PROBE_ACTION="kill")  # fmt: skip
    argv = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
            *train_argv(write_train_probe(tmp_path), out, "--resume")]  # fmt: skip
    proc = children.start("torchrun", argv, env)
    assert children.wait(proc, 300) == 0, children.tail(proc)
    agent = children.output(proc)
    assert re.search(r"failed \(exitcode: -9\) local_rank: 1", agent), agent[-3000:]
    logs = (out / "log.txt").read_text().split("Command line arguments")
    assert len(logs) == 3, "expected two starts"  # text before the first start, two starts
    assert "Starting training from iteration 0" in logs[1]
    assert "Loading from " + str(out / "model_0000001.pth") in logs[2]
    assert "Starting training from iteration 2" in logs[2]
    assert_same_weights(reference, out / "model_final.pth")
