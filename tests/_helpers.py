"""Helpers shared by the training tests (imported as ``_helpers``; pytest puts tests/ on sys.path)."""

import json
from pathlib import Path


def quick(config, tmp_path, **over):
    """A config made CI-sized: no progress bar, data under ``tmp_path``, ``"section.key": value`` overrides."""
    config.progress = False
    config.data.root = str(Path(tmp_path) / "data")
    for k, v in over.items():
        sec, key = k.split(".")
        config[sec][key] = v
    return config


def losses(workdir) -> dict[int, float]:
    """step -> loss from a workdir's metrics.jsonl."""
    rows = [json.loads(ln) for ln in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}
