"""A from-scratch model that starts from an earlier bundle's weights (``imgclf update``), its head matched by name.

Training a small model from scratch again for every new category throws
away what it learnt; starting from the old weights and rehearsing the old
images with the new ones keeps the old classes while the new ones are
learnt. The class list may have grown (and a new name sorts in between), so
every output row of the head is copied by class name; a new class's row
keeps its fresh initialisation. The normalisation is the old bundle's too:
the old weights expect its inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)


def load_warm_start(model: nn.Module, bundle_dir: Path, classes: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Load ``bundle_dir``'s weights into ``model`` (output rows by class name); the bundle's (mean, std)."""
    from safetensors.torch import load_file

    from imgclf.deploy.bundle import WEIGHTS_FILE, read_bundle_info

    info = read_bundle_info(bundle_dir)
    try:
        old = load_file(str(bundle_dir / WEIGHTS_FILE))
    except (OSError, RuntimeError) as error:
        raise ImgclfError(f"{bundle_dir / WEIGHTS_FILE} cannot be read ({error}); "
                          "restore the run's model/ folder or retrain it") from None
    rows = torch.tensor([info.classes.index(name) if name in info.classes else -1 for name in classes])
    head = _head_names(model)
    state = model.state_dict()
    for name, tensor in state.items():
        source = old.get(name)
        if source is not None and name in head and source.shape[1:] == tensor.shape[1:]:
            state[name] = _by_class(source, tensor, rows)
        elif source is not None and source.shape == tensor.shape:
            state[name] = source
        else:
            raise ImgclfError(f"{bundle_dir}: its weights do not fit the model at {name}; update needs the run's own "
                              "architecture and bundle (retrain with imgclf train if they were changed)")
    model.load_state_dict(state)
    log.info(f"started from {bundle_dir}'s weights ({sum(int(row) >= 0 for row in rows)} of {len(classes)} "
             "classes known)")
    return tuple(info.mean), tuple(info.std)


def _head_names(model: nn.Module) -> set[str]:
    """The state-dict names of the model's classifier (one row per class)."""
    head = model.get_classifier()  # type: ignore[operator]  # timm's/our models' method; nn.Module's hint does not know it
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {f"{prefix}.{name}" if prefix else name for name in head.state_dict()}


def _by_class(source: torch.Tensor, fresh: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``fresh`` with each known class's row replaced by the old row of that class."""
    result = fresh.clone()
    known = rows >= 0
    result[known] = source[rows[known]].to(result.dtype)
    return result
