"""Label files: .txt (one label per line) or .json (a list, or an object index -> name)."""
from __future__ import annotations

import json
from pathlib import Path

from edgeinfer.errors import ConfigError


def load_labels(path: str) -> list[str]:
    if not path:
        return []
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read labels: {exc.strerror or exc}") from exc
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: labels file is not valid JSON: {exc}") from exc
        if isinstance(data, list):
            return [str(x) for x in data]
        if isinstance(data, dict):
            try:
                items = sorted((int(k), str(v)) for k, v in data.items())
            except ValueError as exc:
                raise ConfigError(f"{p}: JSON labels object needs integer keys ({exc})") from exc
            labels = [""] * (items[-1][0] + 1 if items else 0)
            for i, name in items:
                labels[i] = name
            return labels
        raise ConfigError(f"{p}: JSON labels must be a list or an object, got {type(data).__name__}")
    return [line.strip() for line in text.splitlines() if line.strip()]


def label_of(labels: list[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)
