"""Cell classification: CTC or WBC from a bright-field crop.

``load_classifier(path, device, precision)`` gives a :class:`Classifier` with ``predict(crops)``
→ P(CTC), in float32 or int8 (CPU);
:class:`BatchClassifier` is the live stage that batches crops across frames.
"""

from ctc_live.classification.inference import (
    BatchClassifier,
    Classified,
    Classifier,
    load_classifier,
)
from ctc_live.classification.modelfile import ModelFileError, load_model, save_model
from ctc_live.classification.networks import ARCHITECTURES, CLASSES, build_network, prepare

__all__ = [
    "ARCHITECTURES", "CLASSES", "BatchClassifier", "Classified", "Classifier", "ModelFileError",
    "build_network", "load_classifier", "load_model", "prepare", "save_model",
]
