"""What a logger writes: scalars, images, histograms, text, hyperparameters and figures.

Each value has a ``name``; the step, epoch and phase it belongs to travel with the write
(``Backend.write``), so one write carries every value of a step. Backends take what they can
show and skip the rest (the CSV file keeps scalars only, MLflow has no histograms).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Figure", "Histogram", "Hyperparameters", "Image", "Loggable", "Scalar", "Text", "encode_png"]

HyperparameterValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Scalar:
    """One number, e.g. ``Scalar("loss", 0.31)``."""

    name: str
    value: float


@dataclass(frozen=True, slots=True)
class Image:
    """A picture: ``pixels`` of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``,
    either ``uint8`` or floats in ``[0, 1]``.

    Example:
        >>> image = Image("mask", np.zeros((2, 3)))
        >>> image.png()[:4]
        b'\\x89PNG'
    """

    name: str
    pixels: np.ndarray[Any, Any]

    def png(self) -> bytes:
        """The image encoded as PNG."""
        return encode_png(self.pixels)


@dataclass(frozen=True, slots=True)
class Histogram:
    """The distribution of ``values`` (any shape, flattened), in ``bins`` equal-width buckets.

    Example:
        >>> edges, counts = Histogram("w", np.array([0.0, 1.0, 1.0, 3.0]), bins=3).buckets()
        >>> edges.tolist(), counts.tolist()
        ([0.0, 1.0, 2.0, 3.0], [1, 2, 1])
    """

    name: str
    values: np.ndarray[Any, Any]
    bins: int = 30

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
    """Text, shown as Markdown where the backend can (TensorBoard's TEXT tab)."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    """The run's hyperparameters, once per run.

    Attributes:
        values: Name -> bool, int, float or str.
        metrics: Metric keys (``"valid/loss"``) to show against them, where the backend has
            such a view (TensorBoard's HPARAMS tab shows each one's last value).
    """

    values: Mapping[str, HyperparameterValue]
    metrics: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Figure:
    """A matplotlib figure, saved as PNG by the backend."""

    name: str
    figure: Any

    def png(self) -> bytes:
        """The figure rendered as PNG."""
        import io

        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")  # a pyplot-free Figure renders with Agg
        return buffer.getvalue()


Loggable = Scalar | Image | Histogram | Text | Hyperparameters | Figure


def encode_png(pixels: np.ndarray[Any, Any]) -> bytes:
    """Encode an image array as PNG (8 bits per channel), with zlib only.

    Raises:
        ValueError: an array of another shape or value range.
    """
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(
            f"Image pixels must have shape (H, W) or (H, W, C) with C in 1, 3, 4; got {array.shape}."
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"Image pixels must be uint8, or floats in [0, 1]; got {array.dtype} from "
                f"{array.min()} to {array.max()}. Scale them, e.g. pixels / pixels.max()."
            )
        array = np.round(array * 255).astype(np.uint8)
    height, width, channels = array.shape
    colour = {1: 0, 3: 2, 4: 6}[channels]  # greyscale, RGB, RGBA
    rows = b"".join(b"\x00" + array[row].tobytes() for row in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
