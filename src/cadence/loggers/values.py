"""What a logger writes: scalars, images, histograms, text, hyperparameters and figures.

Each value has a ``name``; the step, epoch and phase it belongs to travel with the write
(``Backend.write``), so one write carries every value of a step. Backends take what they can
show and skip the rest (the CSV file keeps scalars only, MLflow has no histograms).

Every value is checked when it is built, so that a bad one is a ``TypeError`` or
``ValueError`` in the code that built it, with the fix, and never a failure of the backends
it is written to.
"""

from __future__ import annotations

import numbers
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "Figure",
    "Histogram",
    "Hyperparameters",
    "Image",
    "Loggable",
    "Scalar",
    "Text",
    "check_loggables",
    "encode_png",
]

HyperparameterValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Scalar:
    """One number, e.g. ``Scalar("loss", 0.31)``; an int, a numpy number or a one-element
    tensor is kept as a float.

    Raises:
        TypeError: a name that is not a string, or a value that is not a number.
        ValueError: a tensor or array with more than one element.

    Example:
        >>> Scalar("loss", 1)
        Scalar(name='loss', value=1.0)
    """

    name: str
    value: float

    def __post_init__(self) -> None:
        _check_name("Scalar", self.name)
        if type(self.value) is not float:  # the common case costs one check
            object.__setattr__(self, "value", _number(self.name, self.value))


@dataclass(frozen=True, slots=True)
class Image:
    """A picture: ``pixels`` of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``,
    either ``uint8`` or floats in ``[0, 1]``.

    Raises:
        ValueError: pixels of another shape or value range (the message says how to fix them).

    Example:
        >>> image = Image("mask", np.zeros((2, 3)))
        >>> image.png()[:4]
        b'\\x89PNG'
        >>> Image("mask", np.full((2, 3), 3.0))
        Traceback (most recent call last):
        ...
        ValueError: Image('mask'): pixels must be uint8 (0 to 255) or floats in [0, 1]; got float64 from 3.0 to 3.0. Scale them, e.g. Image('mask', pixels / pixels.max()), or convert 0..255 integers: pixels.astype(numpy.uint8)
    """

    name: str
    pixels: np.ndarray[Any, Any]

    def __post_init__(self) -> None:
        _check_name("Image", self.name)
        object.__setattr__(self, "pixels", _check_pixels(self.pixels, f"Image({self.name!r})"))

    def png(self) -> bytes:
        """The image encoded as PNG."""
        return encode_png(self.pixels)


@dataclass(frozen=True, slots=True)
class Histogram:
    """The distribution of ``values`` (any shape, flattened), in ``bins`` equal-width buckets.

    Raises:
        TypeError: values that are not numbers.
        ValueError: ``bins`` below 1.

    Example:
        >>> edges, counts = Histogram("w", np.array([0.0, 1.0, 1.0, 3.0]), bins=3).buckets()
        >>> edges.tolist(), counts.tolist()
        ([0.0, 1.0, 2.0, 3.0], [1, 2, 1])
    """

    name: str
    values: np.ndarray[Any, Any]
    bins: int = 30

    def __post_init__(self) -> None:
        _check_name("Histogram", self.name)
        values = _array(self.values, f"Histogram({self.name!r})", "values")
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise TypeError(
                f"Histogram({self.name!r}): values must be numbers; got an array of {values.dtype}. "
                f"Pass e.g. tensor.detach().cpu().numpy()."
            )
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 1:
            raise ValueError(f"Histogram({self.name!r}, bins=...) expects an int >= 1, e.g. bins=30; got {self.bins!r}.")
        object.__setattr__(self, "values", values)

    def buckets(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """``(edges, counts)``: ``bins + 1`` edges and ``bins`` counts (one bucket when every
        value is the same)."""
        values = np.asarray(self.values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size and values.min() == values.max():
            centre = float(values[0])
            return np.array([centre - 0.5, centre + 0.5]), np.array([values.size])
        counts, edges = np.histogram(values, bins=self.bins)
        return edges, counts


@dataclass(frozen=True, slots=True)
class Text:
    """Text, shown as Markdown where the backend can (TensorBoard's TEXT tab).

    Raises:
        TypeError: ``text`` is not a string.
    """

    name: str
    text: str

    def __post_init__(self) -> None:
        _check_name("Text", self.name)
        if not isinstance(self.text, str):
            raise TypeError(f"Text({self.name!r}, ...) expects a string; got {type(self.text).__name__}. Pass str(value).")


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    """The run's hyperparameters, once per run.

    Attributes:
        values: Name -> bool, int, float or str.
        metrics: Metric keys (``"valid/loss"``) to show against them, where the backend has
            such a view (TensorBoard's HPARAMS tab shows each one's last value).

    Raises:
        TypeError: a name that is not a string, or a value of another type.
    """

    values: Mapping[str, HyperparameterValue]
    metrics: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.values, Mapping):
            raise TypeError(f'Hyperparameters(values) expects a dict such as {{"lr": 0.1}}; got {type(self.values).__name__}.')
        bad = {k: v for k, v in self.values.items() if not isinstance(k, str) or not isinstance(v, (bool, int, float, str))}
        if bad:
            raise TypeError(
                f"Hyperparameters(values) takes names (str) -> bool, int, float or str; got "
                f"{', '.join(f'{k!r}: {type(v).__name__}' for k, v in bad.items())}. Write e.g. "
                f'{{"batch_size": 32, "layers": "64-32"}}.'
            )
        metrics = tuple(self.metrics)
        if not all(isinstance(m, str) for m in metrics):
            raise TypeError(f'Hyperparameters(metrics=...) expects metric keys such as ("valid/loss",); got {self.metrics!r}.')
        object.__setattr__(self, "metrics", metrics)


@dataclass(frozen=True, slots=True)
class Figure:
    """A matplotlib figure, rendered to PNG when the value is built (so it is drawn once,
    however many backends write it, and later changes to the figure do not show).

    Raises:
        TypeError: ``figure`` is not a matplotlib figure.
    """

    name: str
    figure: Any
    _png: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("Figure", self.name)
        if not callable(getattr(self.figure, "savefig", None)):
            raise TypeError(
                f"Figure({self.name!r}, ...) expects a matplotlib figure (matplotlib.figure.Figure, "
                f"or plt.gcf()); got {type(self.figure).__name__}."
            )
        import io

        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")  # a pyplot-free Figure renders with Agg
        object.__setattr__(self, "_png", buffer.getvalue())

    def png(self) -> bytes:
        """The figure rendered as PNG."""
        return self._png


Loggable = Scalar | Image | Histogram | Text | Hyperparameters | Figure
_KINDS = (Scalar, Image, Histogram, Text, Hyperparameters, Figure)


def check_loggables(values: Iterable[object]) -> None:
    """Refuse anything in ``values`` that is not a loggable value.

    Raises:
        TypeError: naming the value and the kinds a backend writes.

    Example:
        >>> check_loggables([Scalar("loss", 0.5)])
        >>> check_loggables([0.5])
        Traceback (most recent call last):
        ...
        TypeError: Logger backends write Scalar, Image, Histogram, Text, Hyperparameters and Figure values (from cadence.loggers); got float: 0.5. Wrap it, e.g. Scalar("loss", 0.5).
    """
    for value in values:
        if not isinstance(value, _KINDS):
            raise TypeError(
                f"Logger backends write Scalar, Image, Histogram, Text, Hyperparameters and Figure "
                f"values (from cadence.loggers); got {type(value).__name__}: {str(value)[:80]}. "
                f'Wrap it, e.g. Scalar("loss", 0.5).'
            )


def encode_png(pixels: np.ndarray[Any, Any]) -> bytes:
    """Encode an image array as PNG (8 bits per channel), with zlib only.

    Raises:
        ValueError: an array of another shape or value range (the same checks as ``Image``).

    Example:
        >>> encode_png(np.zeros((1, 1), dtype=np.uint8))[:4]
        b'\\x89PNG'
    """
    array = _check_pixels(pixels, "encode_png")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8:
        array = np.round(array * 255).astype(np.uint8)
    height, width, channels = array.shape
    colour = {1: 0, 3: 2, 4: 6}[channels]  # greyscale, RGB, RGBA
    rows = b"".join(b"\x00" + array[row].tobytes() for row in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# ---- the checks -------------------------------------------------------------------------------


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f'{kind}(name, ...) expects a non-empty string as the name, e.g. {kind}("loss", ...); got {name!r}.')


def _number(name: str, value: object) -> float:
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        count = value.numel() if isinstance(value, torch.Tensor) else value.size
        if count == 1:
            return float(value.item())
        raise ValueError(
            f"Scalar({name!r}, ...) expects one number; got {count} of them (shape {tuple(value.shape)}). "
            f"Log one, e.g. Scalar({name!r}, float(values.mean()))."
        )
    raise TypeError(
        f"Scalar({name!r}, ...) expects a number, e.g. Scalar({name!r}, 0.25) or Scalar({name!r}, "
        f"float(tensor)); got {type(value).__name__}: {str(value)[:40]}."
    )


def _array(values: object, owner: str, what: str) -> np.ndarray[Any, Any]:
    try:
        return np.asarray(values)
    except (TypeError, ValueError, RuntimeError) as error:  # a tensor on a GPU, a ragged list
        raise TypeError(
            f"{owner}: {what} must be an array; got {type(values).__name__} ({error}). Pass a numpy "
            f"array, e.g. tensor.detach().cpu().numpy()."
        ) from error


def _check_pixels(pixels: object, owner: str) -> np.ndarray[Any, Any]:
    """``pixels`` as an array, checked: the shape and the value range a PNG can hold."""
    array = _array(pixels, owner, "pixels")
    shape = array.shape
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))) or 0 in shape:
        raise ValueError(
            f"{owner}: pixels must have shape (H, W) or (H, W, C) with C in 1, 3, 4; got shape "
            f"{shape}. A (C, H, W) tensor is pixels.permute(1, 2, 0)."
        )
    if array.dtype == np.uint8:
        return array
    low = high = None
    if np.issubdtype(array.dtype, np.floating):
        low, high = array.min(), array.max()
        if np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 1:
            return array
    where = f" from {low} to {high}" if low is not None else ""
    fix = f"{owner[:-1]}, pixels / pixels.max())" if owner.endswith(")") else f"{owner}(pixels / pixels.max())"
    raise ValueError(
        f"{owner}: pixels must be uint8 (0 to 255) or floats in [0, 1]; got {array.dtype}{where}. "
        f"Scale them, e.g. {fix}, or convert 0..255 integers: pixels.astype(numpy.uint8)"
    )
