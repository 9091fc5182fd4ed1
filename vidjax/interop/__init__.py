"""PyTorch interop: Open-Sora v1.0 / PixArt-α checkpoints and Open-Sora v1.2's published directories in and out.

- ``torch_names``: the one name/layout map; ``stdit_to_state_dict`` (export) and
  ``load_state_dict_into_stdit`` (import), both pure functions of an ``STDiT``.
- ``pretrained``: v1.2's Hugging Face directories (``OpenSora-STDiT-v3``, ``OpenSora-VAE-v1.2``):
  ``from_pretrained``, ``save_stdit3_pretrained``, strict loads with the same report.
- ``files``: reading ``.pth`` (torch) / ``.safetensors`` (no torch), writing safetensors + JSON.
CLIs: ``python -m vidjax.export`` and ``python -m vidjax.convert``.
"""

from vidjax.interop.files import (
    CheckpointFormatError,
    read_checkpoint,
    save_safetensors,
    select_state_dict,
    write_opensora,
)
from vidjax.interop.pretrained import (
    from_pretrained,
    load_pretrained,
    load_pretrained_dir,
    save_stdit3_pretrained,
    save_vae_pretrained,
    stdit3_from_pretrained,
    vae_from_pretrained,
)
from vidjax.interop.torch_names import (
    CheckpointMismatchError,
    ImportReport,
    check_state_dict,
    entries,
    load_state_dict_into_stdit,
    state_dict_shapes,
    stdit3_state_dict_shapes,
    stdit3_to_state_dict,
    stdit_to_state_dict,
)

__all__ = [
    "CheckpointFormatError", "CheckpointMismatchError", "ImportReport", "check_state_dict", "entries",
    "load_pretrained", "load_state_dict_into_stdit", "read_checkpoint", "save_safetensors", "select_state_dict",
    "state_dict_shapes", "stdit_to_state_dict", "write_opensora", "from_pretrained", "load_pretrained_dir",
    "save_stdit3_pretrained", "save_vae_pretrained", "stdit3_from_pretrained", "vae_from_pretrained",
    "stdit3_state_dict_shapes", "stdit3_to_state_dict",
]
