"""Checkpoints and exact resume: what a checkpoint holds, how it is written and read safely,
and how a resumed ``fit`` gets back to the exact batch.

- ``resume``: open this first. ``FitRun`` is one ``fit`` as checkpoints see it: the position
  in the data, what a checkpoint captures, the restore on resume, SIGTERM and Ctrl-C.
- ``files``: the two-file checkpoint format, atomic writes, loading that never runs code.
- ``snapshot``: the learner's state in a checkpoint (model, optimizer, callbacks, cbstate).
- ``saver``: the protocols between ``FitRun`` and the callback that saves (``Checkpointer``).
- ``replay``: the data order again (DataLoader generators, samplers, skipping done batches).
- ``rng``: the random number generators' states.

Users import from ``cadence.checkpoint`` (reading and listing checkpoints) and use
``Checkpointer``; the rest is the library's.
"""
