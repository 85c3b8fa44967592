"""Data-parallel training on torch.distributed: one process per device, on one machine or many,
with the graph's guarantees across ranks (the same plans everywhere, stops agreed at the same
batch, metrics over all the data, checkpoints written once).

- ``strategy``: open this first. ``DataParallel``, the strategy a ``Learner`` trains with
  (wraps the model in DDP, shards the data, picks the device), and the ``Strategy`` protocol.
- ``group``: the process group from torchrun's environment, ``rank()``/``world_size()``, and
  the few collectives cadence runs (never per batch).
- ``sharding``: each rank's share of the data (``ShardSampler``, whole-batch shards).
- ``plans``: the check that every rank built the same plans, and each rank's copy of a plan
  (rank-zero callbacks skipped elsewhere).
- ``agreement``: stops from rank-local state agreed by every rank at the same batch, riding in
  DDP's gradient all-reduce.
- ``loop``: what a phase runs on in a distributed fit (DDP's forward, the agreed step).
- ``interrupts``: SIGTERM and Ctrl-C as requests every rank agrees on.
- ``reduction``: ``Metrics``' values over every rank's data.
- ``checkpoints``: checkpoints written once by rank zero, and what a resume on another world
  size keeps.
- ``launcher``: ``launch(fn, nprocs=N)`` starts local processes from a script or a notebook.
"""

from cadence.distributed.group import current, local_rank, rank, world_size
from cadence.distributed.launcher import launch
from cadence.distributed.strategy import DataParallel, Strategy

__all__ = ["DataParallel", "Strategy", "current", "launch", "local_rank", "rank", "world_size"]
