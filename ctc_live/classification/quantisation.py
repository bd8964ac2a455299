"""int8 inference on the CPU: static post-training quantisation with torch.ao FX.

Static quantisation fixes every activation's int8 scale before inference, from inputs that
look like the ones it will see. So a model file that may run in int8 carries a calibration
set: crops of its training data prepared as network input (resized and standardised, one
channel, float16) under the tensor name ``CALIBRATION_KEY``. The network is quantised from
them each time it is loaded (seconds), so the file holds one set of weights, in float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import chain, zip_longest

import numpy as np
import torch
from torch import nn

from ctc_live.classification.networks import prepare, to_channels
from ctc_live.errors import CtcLiveError

CALIBRATION_KEY = "calibration.crops"
# About 0.5 MB in a model file and a few seconds of ResNet-50 calibration at load. 64 or 128
# scored the same on the held-out simulated set; 256 leaves margin for more varied real cells.
CALIBRATION_CROPS = 256
# oneDNN ran both networks fastest from batch 8 up on the AVX2 development CPU (ResNet-50 at
# batch 32: 1.3-1.6x the "x86" engine, 2.5-3x float32); "x86" (fbgemm) only won at batch 1.
ENGINE = "onednn"
# Activations in 7 bits (the "x86" qconfig's reduce_range) rather than oneDNN's default 8:
# without VNNI oneDNN's int8 products can saturate (PyTorch warns of accuracy loss), and on the
# held-out simulated set 8-bit activations moved the ResNet-50's P(CTC) three times as far from
# float32 (p99 0.22 vs 0.07; 23 vs 8 changed calls of 2000) for no gain in speed.
QCONFIG = "x86"
# Crops per calibration forward pass: bounds memory for the ResNet-50.
CALIBRATION_BATCH = 64


def calibration_crops(crops: Sequence[np.ndarray], labels: np.ndarray, size: int,
                      n: int = CALIBRATION_CROPS, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` crops, alternating classes so a rare class is still represented, as
    standardised network input without the channel mapping: (n, 1, size, size) float16."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in (0, 1)]
    pick = [i for i in chain.from_iterable(zip_longest(*per_class)) if i is not None][:n]
    return prepare([crops[i] for i in pick], size).half()


def check_engine() -> None:
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise CtcLiveError(
            f"int8 inference needs torch's {ENGINE!r} quantised engine, which this torch build "
            f"lacks (it has {', '.join(torch.backends.quantized.supported_engines)}); use "
            "precision float32"
        )


def quantise(model: nn.Module, calibration: torch.Tensor, normalisation: dict) -> nn.Module:
    """An eval-mode float network → its int8 version (float input and output), calibrated on
    ``calibration`` (N, 1, s, s) standardised crops."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    check_engine()
    # Process-wide, but nothing else in ctc-live runs quantised operators.
    torch.backends.quantized.engine = ENGINE
    x = to_channels(calibration.float(), normalisation)
    with warnings.catch_warnings():
        # torch.ao's FX quantisation is marked deprecated in favour of torchao, but it is the
        # path that runs eagerly on the CPU without a compiler; torch is pinned in
        # pyproject.toml, and the tests run this path.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
        prepared = prepare_fx(model.eval(), get_default_qconfig_mapping(QCONFIG), (x[:1],))
        with torch.no_grad():
            for start in range(0, len(x), CALIBRATION_BATCH):
                prepared(x[start:start + CALIBRATION_BATCH])
        return convert_fx(prepared)
