"""What the user hands a learner (the data, the model, the loss) and what the loop tells them
when one of them misbehaves. None of it runs per batch unless something already failed.

- ``data``: open this first. The ``(train, valid)`` pair, checked when it is handed over, and
  the learner's own data for an entry point given none.
- ``diagnostics``: the messages: a loss that is not a scalar tensor, a failed ``backward()``,
  an exception inside the model or the loss (a note with the phase, epoch and batch), an epoch
  that drew no batches, data that can never yield batches.
"""
