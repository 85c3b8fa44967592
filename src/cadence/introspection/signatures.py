"""What cadence reads from a callback's own code: whether each handler can be called as
``method(event, phase, learner)``, and which constructor arguments its ``repr`` shows.

Both work from signatures, once per class (handlers) or per ``repr()`` call, never per event.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any

from cadence.errors import DeclarationError

__all__ = ["check_handler", "check_handler_function", "constructor_repr"]

_CALL = ("event", "phase", "learner")


def check_handler(cls: type, name: str, marks: Iterable[str]) -> None:
    """Raise ``DeclarationError`` unless ``cls.<name>`` can be called as
    ``callback.<name>(event, phase, learner)``. ``marks`` are its ``@on(...)``, for the message.

    Methods taking ``*args`` or ``**kwargs``, or extra parameters with defaults, pass; objects
    whose signature cannot be read (some builtins) are left to the first call.
    """
    attr = inspect.getattr_static(cls, name, None)
    if isinstance(attr, staticmethod):
        function, bound = attr.__func__, 0
    elif isinstance(attr, classmethod):
        function, bound = attr.__func__, 1
    elif inspect.isfunction(attr):
        function, bound = attr, 1
    else:
        return
    problem = _binding_problem(function, bound)
    if problem is None:
        return
    shown = ", ".join(marks)
    raise DeclarationError(
        f"{cls.__name__}.{name} is a handler ({shown}), and cadence calls it as "
        f"{name}(event, phase, learner), but its signature is {name}{_signature(function)}: "
        f"{problem}. Write it as: def {name}(self, event, phase, learner): ..."
    )


def check_handler_function(fn: Callable[..., Any], where: str) -> None:
    """Raise ``TypeError`` unless ``fn`` can be called as ``fn(event, phase, learner)``."""
    try:
        inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read: left to the first call
        return
    problem = _binding_problem(fn, 0)
    if problem is not None:
        name = getattr(fn, "__name__", "fn")
        raise TypeError(
            f"{where} calls fn(event, phase, learner), but {name}{_signature(fn)} cannot be "
            f"called that way: {problem}. Write it as: def {name}(event, phase, learner): ..."
        )


def _binding_problem(function: Callable[..., Any], bound: int) -> str | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*([None] * (bound + len(_CALL))))
    except TypeError as error:
        return str(error)
    return None


def _signature(function: Callable[..., Any]) -> str:
    """The parameters as written, without annotations: ``(self, learner)``."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return "(...)"
    bare = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=signature.empty))


def constructor_repr(obj: object) -> str:
    """``Name(arg, key=value)``: the arguments of ``type(obj).__init__`` whose value, read from
    the same-named attribute (or ``_name``), differs from the default. Required arguments are
    shown positionally while they can be; one without such an attribute shows as ``name=...``.

    Example:
        >>> class Patient:
        ...     def __init__(self, monitor, *, patience=3, verbose=False):
        ...         self.monitor, self.patience, self.verbose = monitor, patience, verbose
        >>> constructor_repr(Patient("valid/loss", patience=5))
        "Patient('valid/loss', patience=5)"
    """
    kind = type(obj)
    try:
        parameters = list(inspect.signature(kind.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return f"{kind.__name__}()"
    state = getattr(obj, "__dict__", {})
    shown: list[str] = []
    positional = True
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            positional = False
            continue
        found, value = _attribute(state, p.name)
        required = p.default is p.empty
        if not found:
            if required:
                shown.append(f"{p.name}=...")
            positional = False
            continue
        if not required and _same(value, p.default):
            positional = False
            continue
        text = _show(value)
        if required and positional and p.kind is not p.KEYWORD_ONLY:
            shown.append(text)
        else:
            shown.append(f"{p.name}={text}")
            positional = False
    return f"{kind.__name__}({', '.join(shown)})"


def _attribute(state: dict[str, Any], name: str) -> tuple[bool, Any]:
    for key in (name, f"_{name}"):
        if key in state:
            return True, state[key]
    return False, None


def _same(value: object, default: object) -> bool:
    if value is default:
        return True
    if default is None and isinstance(value, (dict, list, tuple, set)) and not value:
        return True  # None standing for "none": stored as an empty container
    if _number(value) and _number(default):
        return value == default  # 2 and 2.0: a stored float(norm_type) is the default
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # tensors and other values without a plain truth
        return False


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: object) -> str:
    if isinstance(value, os.PathLike):
        return repr(os.fspath(value))
    return repr(value)
