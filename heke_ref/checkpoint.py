"""Load the authors' checkpoints, the shared reference weights, and demo weights.

The official files are PyTorch 1.1 pickles ``{'state_dict': ..., <optimizer state>}``, keys
possibly prefixed ``module.`` (DataParallel). They are read with ``weights_only=True``; a file
holding objects outside PyTorch's safe list is refused unless the caller passes
``trust_pickle=True`` for a file they trust (full unpickling can run code).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from heke_ref.registry import create_model
from heke_runtime.errors import CheckpointError
from heke_runtime.files import sha256_file
from heke_runtime.models import MODELS, model_entry

DEMO_SEED = 20211020


@dataclass(frozen=True)
class Weights:
    """A state dict with where it came from; ``demo`` weights are not quality predictors."""

    model: str
    state_dict: dict[str, Tensor]
    sha256: str
    source: str
    demo: bool = False
    tiny: bool = False

    def describe(self) -> str:
        kind = "DEMO weights (not quality predictions)" if self.demo else "weights"
        return f"{self.model} {kind} from {self.source} (sha256 {self.sha256[:12]})"


def sha256_state_dict(state_dict: Mapping[str, Tensor]) -> str:
    """A content hash of a state dict (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def _read_pickle(path: Path, trust_pickle: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        # torch says "Weights only load failed" for garbage too; only an unsafe *global*
        # means a readable pickle that full unpickling could load.
        if "Unsupported global" in str(exc) or "can still be loaded" in str(exc):
            raise CheckpointError(
                f"{path}: holds objects outside PyTorch's safe list, so weights_only loading "
                "refused it; if you trust this file, pass --trust-checkpoint "
                "(trust_pickle=True), which unpickles it fully and can run code"
            ) from None
        reason = str(exc).splitlines()[0][:120]
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({reason})") from None
    except RuntimeError as exc:
        reason = str(exc).split(". ")[0]
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({reason})") from None
    except (EOFError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from None


def _extract_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: no 'state_dict' mapping in the checkpoint")
    tensors: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is not a tensor")
        name = key[len("module.") :] if key.startswith("module.") else key
        tensors[name] = value
    return tensors


def check_state_dict(
    model_name: str,
    state_dict: Mapping[str, Tensor],
    *,
    tiny: bool = False,
    source: str = "state dict",
) -> None:
    """Raise one :class:`CheckpointError` naming missing/unexpected keys and shape mismatches."""
    expected = create_model(model_name, tiny=tiny).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    hint = _other_model_hint(model_name, state_dict)
    parts = [f"{source}: does not match {model_name}{hint}"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    raise CheckpointError("; ".join(parts))


def _other_model_hint(model_name: str, state_dict: Mapping[str, Tensor]) -> str:
    for other in MODELS.values():
        prefix = other.checkpoint_prefix
        if other.name != model_name and any(k.startswith(prefix) for k in state_dict):
            return f" (it looks like a {other.name} checkpoint)"
    return ""


def load_checkpoint(path: str | Path, model_name: str, *, trust_pickle: bool = False) -> Weights:
    """Load an authors' checkpoint (``{'state_dict': ...}``) strictly for ``model_name``."""
    model_entry(model_name)
    path = Path(path)
    state = _extract_state_dict(_read_pickle(path, trust_pickle), path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    check_state_dict(model_name, state, source=str(path))
    return Weights(model_name, state, sha256_file(path), str(path))


def load_reference_weights(npz_path: str | Path, model_name: str) -> Weights:
    """The ``w/<key>`` arrays of a ``shared/reference`` file, cast to float32."""
    path = Path(npz_path)
    with np.load(path) as data:
        state = {
            key[2:]: torch.from_numpy(
                data[key].astype(np.float32) if data[key].dtype == np.float16 else data[key]
            )
            for key in data.files
            if key.startswith("w/")
        }
    check_state_dict(model_name, state, source=str(path))
    return Weights(model_name, state, sha256_file(path), str(path))


def save_checkpoint(weights: Weights, path: str | Path, *, module_prefix: bool = False) -> None:
    """Write the authors' format (``{'state_dict': ...}``), e.g. for demo weights."""
    prefix = "module." if module_prefix else ""
    state = {prefix + k: v for k, v in weights.state_dict.items()}
    torch.save({"state_dict": state, "heke_demo": weights.demo}, Path(path))


def apply_weights(model: nn.Module, weights: Weights) -> nn.Module:
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


def load_model(weights: Weights) -> nn.Module:
    """A model in eval mode with ``weights`` loaded strictly."""
    return apply_weights(create_model(weights.model, tiny=weights.tiny), weights)


# --------------------------------------------------------------------------- demo weights


def _frame_like(generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    """Smooth, normalised, image-like noise: low-res noise upsampled, ImageNet-normalised."""
    *lead, height, width = shape
    coarse = torch.rand(*lead, max(height // 8, 1), max(width // 8, 1), generator=generator)
    flat = coarse.reshape(-1, 1, *coarse.shape[-2:])
    smooth = nn.functional.interpolate(flat, size=(height, width), mode="bilinear")
    pixels = smooth.reshape(*lead, height, width)
    return (pixels - 0.45) / 0.226


def _calibration_inputs(model_name: str, generator: torch.Generator) -> tuple[Tensor, ...]:
    if model_entry(model_name).plan == "snippets":
        # Temporally correlated frames: one image plus small per-frame changes.
        base = _frame_like(generator, (4, 3, 1, 64, 80))
        motion = 0.1 * _frame_like(generator, (4, 3, 8, 64, 80))
        return (base + motion,)
    rgb = _frame_like(generator, (4, 3, 64, 80))
    return rgb, 0.1 * _frame_like(generator, (4, 3, 64, 80))


def demo_weights(model_name: str, *, tiny: bool = False, seed: int = DEMO_SEED) -> Weights:
    """Seeded weights with BatchNorm statistics calibrated on frame-like data.

    Raw init with identity BatchNorm gives activations of the wrong scale (and meaningless
    FP16 tests); a few train-mode passes give them a trained network's scale.
    Their scores are not quality predictions and everything made from them says so.
    """
    with torch.random.fork_rng():  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = create_model(model_name, tiny=tiny)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*_calibration_inputs(model_name, generator))
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    source = f"demo seed {seed}" + (" (tiny)" if tiny else "")
    return Weights(model_name, state, sha256_state_dict(state), source, demo=True, tiny=tiny)
