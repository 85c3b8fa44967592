"""What cadence reads from a callback's own code, once per class or per ``repr()``, never per
event.

- ``signatures``: open this first. Whether each handler can be called as
  ``method(event, phase, learner)`` (a ``DeclarationError`` when the class is created, if not),
  and which constructor arguments a callback's ``repr`` shows.

This package imports nothing itself: ``callback`` imports ``signatures`` while it is created.
"""
