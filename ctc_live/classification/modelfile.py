"""Model files: safetensors weights plus a JSON model card ``<stem>.json`` beside them.

The card is plain JSON a person can read (architecture, input size, normalisation, classes,
threshold, training data, metrics, date, version) and carries the SHA-256 of the weights
file, so a card paired with the wrong or a modified weights file is refused. Nothing is ever
unpickled: weights are safetensors, and ImageNet checkpoints in ``.pth`` form are read with
``torch.load(weights_only=True)``. Beside the weights, the file may hold the crops that
calibrate int8 inference (``calibration.crops``, see :mod:`ctc_live.classification.quantisation`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import nn

import ctc_live
from ctc_live.classification.networks import ARCHITECTURES, CLASSES, INPUT_SIZE, build_network
from ctc_live.classification.quantisation import CALIBRATION_KEY
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

CARD_FORMAT = "ctc-live model card 1"
REQUIRED_CARD_KEYS = ("format", "architecture", "input_size", "normalisation", "classes",
                      "threshold", "weights_sha256")


class ModelFileError(CtcLiveError):
    """A model file or card that is missing, corrupted, truncated or does not match."""


def card_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_model(model: nn.Module, path: Path, card: dict,
               calibration: torch.Tensor | None = None,
               calibration_source: str = "training data") -> Path:
    """Write ``path`` (.safetensors) and its card ``<stem>.json``; returns the card's path.

    ``calibration``: prepared crops (N, 1, s, s) for int8 inference, stored as float16 and
    recorded in the card with ``calibration_source``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CtcLiveError(f"{path}: model files must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card = {k: v for k, v in card.items() if k != "calibration"}
    if calibration is not None:
        state[CALIBRATION_KEY] = calibration.detach().cpu().half().contiguous()
        card["calibration"] = {"crops": len(calibration), "source": calibration_source,
                               "tensor": CALIBRATION_KEY}
    save_file(state, str(path), metadata={"format": CARD_FORMAT})
    full = {
        "format": CARD_FORMAT,
        "classes": list(CLASSES),
        "threshold": 0.5,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "ctc_live_version": ctc_live.__version__,
        **card,
        "weights_file": path.name,
        "weights_sha256": _sha256(path),
    }
    cpath = card_path(path)
    cpath.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    log.info("saved model %s (%.1f MB) and card %s", path, path.stat().st_size / 1e6, cpath)
    return cpath


def load_model(path: Path) -> tuple[nn.Module, dict, torch.Tensor | None]:
    """Read a model file and its card → (network, card, calibration crops or None); every
    failure names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    card = read_card(card_path(path))
    data = path.read_bytes()
    try:
        state = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ModelFileError(
            f"{path}: not a readable safetensors file (corrupted or truncated?): {exc}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["weights_sha256"]:
        raise ModelFileError(
            f"{path}: weights do not match the card {card_path(path).name} (sha256 {digest[:12]}… "
            f"≠ {card['weights_sha256'][:12]}…): the file was changed or the card belongs to "
            "another model"
        )
    calibration = state.pop(CALIBRATION_KEY, None)
    model = build_network(card["architecture"])
    _check_keys(model.state_dict(), state, path)
    size = card["input_size"]
    if calibration is not None and (calibration.ndim != 4 or len(calibration) == 0
                                    or tuple(calibration.shape[1:]) != (1, size, size)):
        raise ModelFileError(f"{path}: {CALIBRATION_KEY} has shape {tuple(calibration.shape)}, "
                             f"expected (N, 1, {size}, {size})")
    model.load_state_dict(state)
    return model, card, calibration


def read_card(path: Path) -> dict:
    if not path.is_file():
        raise ModelFileError(f"{path}: model card not found (every .safetensors model needs "
                             "its <stem>.json card beside it)")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: model card is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: model card must be a JSON object")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ModelFileError(f"{path}: model card lacks {', '.join(missing)}")
    if card["format"] != CARD_FORMAT:
        raise ModelFileError(f"{path}: unknown card format {card['format']!r}, "
                             f"expected {CARD_FORMAT!r}")
    arch = card["architecture"]
    if arch not in ARCHITECTURES:
        raise ModelFileError(f"{path}: unknown architecture {arch!r}, expected one of "
                             f"{', '.join(ARCHITECTURES)}")
    if card["input_size"] != INPUT_SIZE[arch]:
        raise ModelFileError(f"{path}: input_size {card['input_size']} does not match "
                             f"{arch} ({INPUT_SIZE[arch]})")
    if list(card["classes"]) != list(CLASSES):
        raise ModelFileError(f"{path}: classes {card['classes']} must be {list(CLASSES)}")
    return card


def load_init_weights(model: nn.Module, path: Path) -> None:
    """Load an ImageNet checkpoint (torchvision/timm resnet50 names) into the body of ``model``.

    ``fc.*`` in the file is ignored (replaced by our head); every other key must match by name
    and shape, or the error lists what is missing, unexpected and of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise CtcLiveError(f"{path}: init weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors_bytes(path.read_bytes())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, EOFError, OSError,
            ValueError) as exc:
        raise CtcLiveError(f"{path}: cannot read init weights: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CtcLiveError(f"{path}: init weights must be a state dict of tensors")
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    _check_keys(ours, body, path)
    model.load_state_dict(body, strict=False)
    log.info("loaded %d body tensors from %s (fc.* replaced by the classification head)",
             len(body), path)


def _check_keys(expected: dict, got: dict, path: Path) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_few(unexpected)}")
        if wrong:
            parts.append("wrong shapes: " + _few(
                [f"{k} {tuple(got[k].shape)} ≠ {tuple(expected[k].shape)}" for k in wrong]))
        raise ModelFileError(f"{path}: weights do not match the network: " + "; ".join(parts))


def _few(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", … ({len(items) - n} more)" if len(items) > n else "")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
