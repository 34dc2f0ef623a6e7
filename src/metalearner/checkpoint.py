"""Checkpoints without pickle: a nested state (``state_dict``s, generator states, histories)
of tensors, numbers, strings, ``None``, lists, tuples and dicts in one safetensors file, its
structure as JSON in the file's metadata, written atomically (a kill leaves the old file or
the new one, never parts of two).

    save_state(path, {"model": model.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state(), "step": 12})
    state = load_state(path)      # the same tree; tuples stay tuples, int keys stay ints

:func:`metalearner.lopt.engine.optimizer_tensors` is the older, flat form for the engine's
outer Adam (tensor-valued per-parameter state only); its checkpoints keep that form.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from metalearner.atomic import atomic_path
from metalearner.errors import DataError

_FORMAT = "metalearner-state/1"


def pack(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``tree`` as JSON-able data, each tensor replaced by ``{"tensor": key}`` and put (a copy)
    in ``tensors``; tuples and dicts whose keys are not all strings are tagged so
    :func:`unpack` restores them as they were."""
    if isinstance(tree, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = tree.detach().cpu().clone().contiguous()  # a copy: safetensors refuses tensors that share memory
        return {"tensor": key}
    if isinstance(tree, tuple):
        return {"tuple": [pack(x, tensors) for x in tree]}
    if isinstance(tree, list):
        return [pack(x, tensors) for x in tree]
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {"dict": {k: pack(v, tensors) for k, v in tree.items()}}
        return {"items": [[pack(k, tensors), pack(v, tensors)] for k, v in tree.items()]}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"a checkpoint holds tensors, numbers, strings, lists, tuples and dicts, not {type(tree).__name__}")


def unpack(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack`."""
    if isinstance(data, list):
        return [unpack(x, tensors) for x in data]
    if isinstance(data, dict):
        ((kind, body),) = data.items()
        if kind == "tensor":
            return tensors[body]
        if kind == "tuple":
            return tuple(unpack(x, tensors) for x in body)
        if kind == "dict":
            return {k: unpack(v, tensors) for k, v in body.items()}
        return {unpack(k, tensors): unpack(v, tensors) for k, v in body}
    return data


def save_state(path: str | os.PathLike, tree: Any) -> None:
    """Write ``tree`` to ``path`` (safetensors), atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(pack(tree, tensors))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": _FORMAT, "state": structure})


def load_state(path: str | os.PathLike) -> Any:
    """The tree :func:`save_state` wrote to ``path``; a file that is not one is a one-line
    :class:`~metalearner.errors.DataError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != _FORMAT:
            raise ValueError("no metalearner state in it")
        return unpack(json.loads(meta["state"]), tensors)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a readable checkpoint ({e}); delete it or use another --out") from None
    except Exception as e:  # safetensors' own error types for a torn or foreign file
        if type(e).__module__.startswith("safetensors"):
            raise DataError(f"{path} is not a readable checkpoint ({e}); delete it or use another --out") from None
        raise


__all__ = ["load_state", "pack", "save_state", "unpack"]
