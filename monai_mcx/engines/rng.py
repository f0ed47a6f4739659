"""RNG states, as a resumable checkpoint saves and restores them, and determinism.

* :func:`get_rng_state` / :func:`set_rng_state`: the torch (CPU and CUDA), numpy and python RNGs, named
  ``torch.Generator`` objects and every MONAI ``Randomizable`` of a transform, as plain tensors and lists
  (loadable with ``weights_only=True``); :class:`~monai_mcx.engines.resume.LastCheckpoint` saves them.
* :func:`configure_determinism`: ``monai.utils.set_determinism`` plus ``torch.use_deterministic_algorithms``.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from monai_mcx.utils import as_bool

__all__ = ["get_rng_state", "set_rng_state", "configure_determinism"]


# --------------------------------------------------------------------------------------------------- RNG state
def _randomizables(transform: Any) -> list:
    """Every MONAI ``Randomizable`` reachable from ``transform`` (Compose children and wrapped transforms),
    in a fixed order, each once."""
    from monai.transforms import Randomizable

    found: list = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        children: list = []
        if isinstance(obj, (list, tuple)):
            children = list(obj)
        elif hasattr(obj, "__dict__") and (
            isinstance(obj, Randomizable) or type(obj).__module__.startswith(("monai", "monai_mcx"))
        ):
            for key in sorted(vars(obj)):
                value = vars(obj)[key]
                if key != "R" and (
                    isinstance(value, (list, tuple)) or type(value).__module__.startswith(("monai", "monai_mcx"))
                ):
                    children.append(value)
        for child in children:
            visit(child, depth + 1)

    visit(transform, 0)
    return found


def _np_state_to_dict(state: tuple) -> dict:
    return {
        "name": state[0],
        "keys": torch.from_numpy(np.asarray(state[1], dtype=np.int64)),
        "pos": int(state[2]),
        "has_gauss": int(state[3]),
        "cached_gaussian": float(state[4]),
    }


def _np_state_from_dict(d: Mapping) -> tuple:
    return (
        d["name"],
        d["keys"].numpy().astype(np.uint32),
        int(d["pos"]),
        int(d["has_gauss"]),
        float(d["cached_gaussian"]),
    )


def get_rng_state(generators: Mapping[str, torch.Generator] | None = None, transforms: Any = None) -> dict:
    """RNG states as plain tensors/lists (loadable with ``weights_only=True``): torch (CPU and CUDA), numpy,
    python ``random``, the named ``generators`` and every ``Randomizable`` in ``transforms``."""
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_dict(np.random.get_state()),
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
        "generators": {k: g.get_state() for k, g in (generators or {}).items() if g is not None},
        "transforms": [_np_state_to_dict(t.R.get_state()) for t in _randomizables(transforms)]
        if transforms is not None
        else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(
    state: Mapping, generators: Mapping[str, torch.Generator] | None = None, transforms: Any = None
) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(_np_state_from_dict(state["numpy"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    for k, g in (generators or {}).items():
        if g is not None and k in state.get("generators", {}):
            g.set_state(state["generators"][k].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if transforms is not None:
        rand = _randomizables(transforms)
        saved = state.get("transforms", [])
        if len(saved) != len(rand):
            warnings.warn(
                f"the checkpoint holds {len(saved)} transform RNG states but the training transforms have "
                f"{len(rand)} random transforms; augmentation RNG not restored"
            )
        else:
            for t, s in zip(rand, saved):
                t.R.set_state(_np_state_from_dict(s))


def configure_determinism(seed: int | None = 0, deterministic: bool = False) -> None:
    """Seed every RNG (``monai.utils.set_determinism``: torch, numpy, python, cuDNN deterministic) and, with
    ``deterministic=True``, make PyTorch use deterministic algorithms (``warn_only``: an op without a
    deterministic kernel warns instead of failing) with the cuBLAS workspace setting CUDA requires."""
    from monai.utils import set_determinism

    deterministic = as_bool(deterministic, "deterministic")
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_determinism(seed=seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
