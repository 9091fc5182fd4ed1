"""PyTorch interop: Open-Sora v1.0 / PixArt-α checkpoints in and out.

- ``torch_names``: the one name/layout map; ``stdit_to_state_dict`` (export) and
  ``load_state_dict_into_stdit`` (import), both pure functions of an ``STDiT``.
- ``files``: reading ``.pth`` (torch) / ``.safetensors`` (no torch), writing safetensors + JSON.
CLIs: ``python -m vidjax.export`` and ``python -m vidjax.convert``.
"""

from vidjax.interop.files import (
    CheckpointFormatError,
    load_pretrained,
    read_checkpoint,
    save_safetensors,
    select_state_dict,
    write_opensora,
)
from vidjax.interop.torch_names import (
    CheckpointMismatchError,
    ImportReport,
    check_state_dict,
    entries,
    load_state_dict_into_stdit,
    state_dict_shapes,
    stdit_to_state_dict,
)

__all__ = [
    "CheckpointFormatError", "CheckpointMismatchError", "ImportReport", "check_state_dict", "entries",
    "load_pretrained", "load_state_dict_into_stdit", "read_checkpoint", "save_safetensors", "select_state_dict",
    "state_dict_shapes", "stdit_to_state_dict", "write_opensora",
]
