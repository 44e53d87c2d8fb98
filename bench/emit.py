"""The one way a bench script ends: its result printed as one JSON object (stdout) and, with
``--out``, written to that file too."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: Path | None = None) -> int:
    """Print ``result`` as indented JSON, write it to ``out`` when given; returns 0 (exit code)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0
