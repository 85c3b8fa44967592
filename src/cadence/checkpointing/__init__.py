"""Checkpoints and exact resume: what a checkpoint holds, how it is written and read safely,
and how a resumed ``fit`` gets back to the exact batch.

- ``resume``: open this first. ``FitRun`` is one ``fit`` as checkpoints see it: the position
  in the data, what a checkpoint captures, the restore on resume, SIGTERM and Ctrl-C.
- ``files``: the two-file checkpoint format, atomic writes, loading that never runs code.
- ``schema``: the shape metadata and a fit's tensors must have before any of it is used.
- ``plain``: what a checkpoint may hold (plain data, no cycles), checked at capture.
- ``locate``: which checkpoint ``fit(resume=...)`` continues from.
- ``folder``: a checkpoint folder belongs to one run (the fits of one learner are one run);
  moving an earlier run's aside.
- ``interrupts``: SIGTERM and Ctrl-C during a fit.
- ``snapshot``: the learner's state in a checkpoint (model, optimizer, callbacks, cbstate).
- ``restore``: putting it back, tried on copies before ``FitBegin``.
- ``weights``: ``learner.load(path)``, a checkpoint's model (and optimizer) without its run.
- ``saver``: the protocols between ``FitRun`` and the callback that saves (``Checkpointer``).
- ``replay``: the data order again (DataLoader generators, samplers, skipping done batches).
- ``rng``: the random number generators' states.

Users import from ``cadence.checkpoint`` (reading and listing checkpoints) and use
``Checkpointer``; the rest is the library's.
"""
