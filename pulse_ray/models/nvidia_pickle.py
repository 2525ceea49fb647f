"""NVIDIA StyleGAN2 ``.pkl`` files (stylegan2-ada-pytorch, stylegan3), read without running their code.

Those files are pickles whose networks carry their own Python source (``module_src``); the
ordinary way to read one imports and runs that source. Here a restricted unpickler resolves only
the globals on :data:`ALLOWED`, each to a function of ours: a persisted network becomes a
:class:`PersistedObject` (class name and state; the source is never read), storages are read with
``torch.load(weights_only=True)``. Any other global ends the read with a :class:`CheckpointError`
naming it, before anything from the file has run.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import CheckpointError
from .stylegan2 import StyleGAN2Config, config_from_state_dict


@dataclass
class PersistedObject:
    """What ``torch_utils.persistence`` stored for a network: its class name and ``__dict__``."""

    class_name: str
    state: dict


class _PlainDict(dict):
    """``dnnlib.util.EasyDict`` read as a dict (NEWOBJ + BUILD need an instance with ``__dict__``)."""


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("persisted object without a class state (not a StyleGAN2 network pickle?)")
    return PersistedObject(str(meta.get("class_name")), meta["state"])


def _load_storage(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not torch.is_tensor(data):
        raise CheckpointError("parameter without tensor data")
    return data


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError("numpy scalar of an object dtype (only numbers are read)")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _numpy_dtype(name, align=False, copy=False):
    dt = np.dtype(str(name))
    if dt.hasobject:
        raise CheckpointError("numpy object dtype (only numbers are read)")
    return dt


ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            if module.startswith("dnnlib.tflib"):
                raise CheckpointError(f"refused to load: a TensorFlow StyleGAN pickle (global {module}.{name}); "
                                      f"use the PyTorch release of the same weights (e.g. stylegan2-ada-pytorch's "
                                      f"ffhq.pkl) or a rosinality .pt") from None
            raise CheckpointError(f"refused to load: the pickle needs the global {module}.{name}, which is not "
                                  f"a StyleGAN2 network part; a pickle can run any code, so only known parts "
                                  f"are read") from None

    def persistent_load(self, pid):
        raise CheckpointError("refused to load: the pickle uses persistent ids (not a NVIDIA network pickle)")


def read_pickle(data: bytes, where: str):
    """Unpickle ``data`` with only :data:`ALLOWED` globals; errors name ``where``."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except Exception as e:  # truncated/corrupt pickles raise many types
        raise CheckpointError(f"{where}: not a readable pickle (corrupt or truncated?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _state_dict(obj: PersistedObject, prefix: str = "") -> dict:
    """Parameters and persistent buffers of a persisted module tree, by dotted name."""
    st = obj.state
    out = {}
    skip = set(st.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, t in (st.get(group) or {}).items():
            if t is not None and name not in skip:
                out[prefix + name] = t
    for name, sub in (st.get("_modules") or {}).items():
        if isinstance(sub, PersistedObject):
            out.update(_state_dict(sub, f"{prefix}{name}."))
    return out


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def load_nvidia_pickle(data: bytes, where: str) -> tuple[StyleGAN2Config, dict, dict]:
    """``G_ema`` of an NVIDIA StyleGAN2 pickle -> (config, NVIDIA-layout state dict, init kwargs)."""
    obj = read_pickle(data, where)
    if not isinstance(obj, dict) or "G_ema" not in obj:
        found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{where}: not a StyleGAN2 network pickle (no 'G_ema'; found {found})")
    g = obj["G_ema"]
    if not isinstance(g, PersistedObject):
        raise CheckpointError(f"{where}: 'G_ema' is not a persisted network")
    sd = _state_dict(g)
    kwargs = _plain(g.state.get("_init_kwargs") or {})
    if "synthesis.input.freqs" in sd or "networks_stylegan3" in g.class_name:
        raise CheckpointError(f"{where}: a StyleGAN3 (alias-free) generator; pulse-ray runs StyleGAN2 networks "
                              f"only (use the StyleGAN2 file, e.g. stylegan2-ffhq-1024x1024.pkl)")
    c_dim = int(kwargs.get("c_dim", g.state.get("c_dim", 0)) or 0)
    if c_dim > 0 or any(k.startswith("mapping.embed.") for k in sd):
        raise CheckpointError(f"{where}: a conditional generator (c_dim={c_dim}); PULSE needs an unconditional one")
    syn = kwargs.get("synthesis_kwargs") or {}
    if syn.get("architecture", "skip") != "skip":
        raise CheckpointError(f"{where}: synthesis architecture {syn['architecture']!r}; only 'skip' "
                              f"(the StyleGAN2 config-F generator) is supported")
    mapping = kwargs.get("mapping_kwargs") or {}
    overrides = {"conv_clamp": syn.get("conv_clamp"), "lr_multiplier": float(mapping.get("lr_multiplier", 0.01))}
    try:
        cfg = config_from_state_dict(sd, **overrides)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    if kwargs.get("img_resolution") not in (None, cfg.resolution):
        raise CheckpointError(f"{where}: img_resolution {kwargs['img_resolution']} disagrees with the weights "
                              f"({cfg.resolution} px)")
    return cfg, sd, kwargs
