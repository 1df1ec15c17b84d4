"""Training on clusters: launch from the environment, the lost-peer watch, signals, resume.

:func:`run` is the one entry of ``train_net.py`` and ``lazy_train_net.py`` (with the flags of
:func:`add_cluster_arguments`); :class:`ClusterHook` is the trainer's side. Nothing outside
this package imports its modules but this entry (docs/clusters.md).
"""

from .hook import ClusterHook
from .launch import add_cluster_arguments, run

__all__ = ["ClusterHook", "add_cluster_arguments", "run"]
