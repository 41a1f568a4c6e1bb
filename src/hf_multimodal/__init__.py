"""hf_multimodal: text + image + audio classification as native Hugging Face transformers models.

Importing the package registers its classes with transformers' Auto classes, so that `AutoConfig`, `AutoModel`,
`AutoModelForSequenceClassification`, `AutoProcessor` and `AutoFeatureExtractor` load saved models without
`trust_remote_code`. Saved models also carry their code, for loading with `trust_remote_code=True` where the package
is not installed.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

from .configuration_multimodal import FUSION_TYPES, MODALITIES, MultimodalConfig
from .configuration_wavenet import WaveNetConfig
from .feature_extraction_wavenet import WaveNetFeatureExtractor, resample_audio
from .modeling_multimodal import (
    MultimodalForSequenceClassification,
    MultimodalModel,
    MultimodalModelOutput,
    MultimodalPreTrainedModel,
    MultimodalSequenceClassifierOutput,
)
from .modeling_wavenet import WaveNetModel, WaveNetPreTrainedModel
from .processing_multimodal import MultimodalProcessor


__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(WaveNetConfig.model_type, WaveNetConfig, exist_ok=True)
    AutoConfig.register(MultimodalConfig.model_type, MultimodalConfig, exist_ok=True)
    AutoModel.register(WaveNetConfig, WaveNetModel, exist_ok=True)
    AutoModel.register(MultimodalConfig, MultimodalModel, exist_ok=True)
    AutoModelForSequenceClassification.register(MultimodalConfig, MultimodalForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(WaveNetConfig, WaveNetFeatureExtractor, exist_ok=True)
    AutoProcessor.register(MultimodalConfig, MultimodalProcessor, exist_ok=True)

    # Saved folders carry the code and an `auto_map`, so they also load with `trust_remote_code=True`.
    MultimodalConfig.register_for_auto_class()
    MultimodalModel.register_for_auto_class("AutoModel")
    MultimodalForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    WaveNetConfig.register_for_auto_class()
    WaveNetModel.register_for_auto_class("AutoModel")
    WaveNetFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    MultimodalProcessor.register_for_auto_class("AutoProcessor")


_register()

__all__ = [
    "FUSION_TYPES",
    "MODALITIES",
    "MultimodalConfig",
    "MultimodalForSequenceClassification",
    "MultimodalModel",
    "MultimodalModelOutput",
    "MultimodalPreTrainedModel",
    "MultimodalProcessor",
    "MultimodalSequenceClassifierOutput",
    "WaveNetConfig",
    "WaveNetFeatureExtractor",
    "WaveNetModel",
    "WaveNetPreTrainedModel",
    "resample_audio",
]
