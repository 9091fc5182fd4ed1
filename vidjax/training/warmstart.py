"""Start a run from earlier weights (``config.train.init_from``), with a strict load report.

``init_from`` names either

* an earlier stage's **workdir** (a folder with ``checkpoints/``): its final EMA weights, copied tensor by tensor
  into the new model by name. Every tensor must exist in both with the same shape, except those matched by
  ``config.train.init_reset`` (comma-separated name fragments, e.g. ``"attn_temp"``), which keep the new model's
  initialisation (temporal attention starts at zero, so stage 2 starts as the stage-1 image model applied frame by
  frame), and tensors absent from the source, accepted only with ``config.train.init_allow_missing``;
* or a **file or published directory** (PixArt-α / Open-Sora / exported weights, a v1.2 model directory), read by
  ``vidjax.interop.load_pretrained`` into the denoiser.

Position embeddings are not stored: STDiT computes them from each batch's size (``space_scale``, ``time_scale``),
so a new resolution or frame count between stages needs nothing else. The report (what was loaded, newly
initialised and dropped) is logged, printed in one line and written to ``<workdir>/init_report.json``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
from flax import nnx, traverse_util

from vidjax.errors import ConfigError, MissingFileError

log = logging.getLogger("vidjax.train")


def _flat(model: nnx.Module) -> dict[str, object]:
    return {".".join(map(str, k)): v for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model))).items()}


def copy_weights(source: nnx.Module, target: nnx.Module, *, reset: tuple[str, ...] = (), allow_missing: bool = False,
                 where: str = "config.train.init_from") -> dict:
    """Copy ``source``'s tensors into ``target`` by name (in place); returns the report
    ``{"loaded": [...], "new": [...], "dropped": [...]}``. A shape mismatch, or a tensor absent from the source
    (unless reset or allowed), is a one-line ConfigError naming it."""
    src, dst = _flat(source), _flat(target)
    loaded, new, mismatched, absent = [], [], [], []
    out = {}
    for name, value in dst.items():
        if any(part in name for part in reset):
            new.append(name)
        elif name not in src:
            (new if allow_missing else absent).append(name)
        elif tuple(np.shape(src[name])) != tuple(np.shape(value)):
            mismatched.append(f"{name} {tuple(np.shape(src[name]))} vs {tuple(np.shape(value))}")
        else:
            out[name] = np.asarray(src[name]).astype(np.asarray(value).dtype)
            loaded.append(name)
    if mismatched:
        raise ConfigError(f"{where}: {len(mismatched)} tensor(s) differ in shape from the model, e.g. "
                          f"{mismatched[0]} (source vs model); the architecture must match the earlier stage's")
    if absent:
        raise ConfigError(f"{where}: {len(absent)} tensor(s) of the model are not in it, e.g. {absent[0]}; use the "
                          "same architecture, or list them in config.train.init_reset (start from initialisation)")
    state = nnx.state(target)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    for key in flat:
        name = ".".join(map(str, key))
        if name in out:
            flat[key] = out[name]
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    nnx.update(target, state)
    dropped = sorted(set(src) - set(dst))
    return {"loaded": loaded, "new": new, "dropped": dropped}


def init_from(model, config, workdir: Path | None) -> dict:
    """Initialise ``model`` (vidjax.models.t2v.TextToVideo) from ``config.train.init_from``; returns the report
    (also written to ``workdir/init_report.json`` when ``workdir`` is given)."""
    from vidjax.interop.torch_names import group_names

    t = config.train
    path = Path(str(t.init_from)).expanduser()
    if not path.exists():
        raise MissingFileError(f"config.train.init_from={t.init_from}: no such file or directory (expected an earlier "
                               "stage's workdir, or a PixArt-α / Open-Sora checkpoint)")
    reset = tuple(p.strip() for p in str(t.get("init_reset", "") or "").split(",") if p.strip())
    if (path / "checkpoints").is_dir():
        from vidjax.checkpoint import restore_model

        prev_config, prev, step = restore_model(path, ema=True)
        if prev_config.text.get("encoder") != config.text.get("encoder"):
            raise ConfigError(f"config.train.init_from={path}: trained with text.encoder="
                              f"{prev_config.text.get('encoder')!r}, but this stage has {config.text.get('encoder')!r}")
        report = copy_weights(prev, model, reset=reset, allow_missing=bool(t.get("init_allow_missing", False)))
        report.update(source=str(path.absolute()), step=int(step), weights="ema")
    else:
        from vidjax.interop import load_pretrained

        rep = load_pretrained(model.dit, path, allow_missing=bool(t.get("init_allow_missing", False)))
        report = {"source": str(path.absolute()), "loaded": list(rep.loaded), "new": list(rep.missing),
                  "dropped": list(rep.dropped)}
    report["recomputed"] = "position embeddings, from each batch's size (space_scale, time_scale)"
    line = (f"initialised from {report['source']}: loaded {len(report['loaded'])} tensors"
            + (f"; new (initialised) {len(report['new'])}: {group_names(report['new'])}" if report["new"] else "")
            + (f"; dropped {len(report['dropped'])}: {group_names(report['dropped'])}" if report["dropped"] else "")
            + "; position embeddings recomputed")
    log.info("%s", line)
    if workdir is not None:
        print(line, file=sys.stderr)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / "init_report.json").write_text(json.dumps(report, indent=1))
    return report


__all__ = ["copy_weights", "init_from"]
