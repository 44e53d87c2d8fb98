"""Loading the files users hand us (checkpoints, predictors) with
``torch.load(weights_only=True)``, and saying in one line why one fails.

``weights_only`` loads tensors and plain containers only, so nothing in the file can run code;
PyTorch reports a refused object and a file that is no PyTorch file at all with the same
exception type and a long message about re-running with ``weights_only=False`` (which would
run the code).  ``load_weights_only`` tells the two apart: an object that asks for a Python
global is *unsafe* (refused, and named), anything else is *unreadable* (corrupt, truncated, or
not written by ``torch.save``)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any


class UnreadableFile(ValueError):
    """``torch.load(weights_only=True)`` failed.  ``unsafe``: the file asks for a Python
    global (code a pickle would run); ``reason``: one line for the user."""

    def __init__(self, path: Path | str, unsafe: bool, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.unsafe, self.reason = Path(path), unsafe, reason


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def describe(exc: BaseException) -> tuple[bool, str]:
    """(unsafe, one-line reason) for an exception ``torch.load(weights_only=True)`` raised."""
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        return True, (f"holds objects other than tensors and plain data (it asks for {found.group(1)}); "
                      "refusing to load it")
    if "weights_only" in text or "WeightsUnpickler" in text:  # the unpickler met bytes no pickle of torch.save makes
        detail = "not a file torch.save wrote"
    else:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        detail = f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__
    return False, f"corrupt, truncated or not a PyTorch file ({detail})"


def load_weights_only(path: Path | str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; UnreadableFile (a
    ValueError naming the file) when it fails.  The caller checks that the file exists."""
    import torch

    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would be a second line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; all mean the same here
        unsafe, reason = describe(exc)
        raise UnreadableFile(path, unsafe, reason) from None
