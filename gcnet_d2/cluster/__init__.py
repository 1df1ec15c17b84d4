"""Training on clusters: launch from the environment, the lost-peer watch, signals, resume.

- :func:`run` is the one entry ``train_net.py`` and ``lazy_train_net.py`` call (with the flags
  of :func:`add_cluster_arguments`): it joins torchrun's or an ``srun`` step's group or lets
  detectron2 spawn (:mod:`.launch`, :mod:`.environment`), resumes a restarted job
  (:mod:`.resume`) and supervises a multi-process run (:mod:`.peers`);
- :class:`ClusterHook` is the trainer's side (:mod:`.hook`): progress for the lost-peer report,
  every rank's RNG state in each checkpoint, ``--checkpoint-minutes``, and SIGUSR1 / SIGTERM
  (:mod:`.signals`): a checkpoint at an iteration boundary all ranks agree on, then, under
  SLURM, ``scontrol requeue`` for SIGUSR1.

Nothing outside this package imports its modules but this entry (docs/clusters.md).
"""

from .hook import ClusterHook
from .launch import add_cluster_arguments, run

__all__ = ["ClusterHook", "add_cluster_arguments", "run"]
