"""hf_multimodal: text + image + audio classification as native Hugging Face transformers models.

Importing the package registers its classes with transformers' Auto classes, so that `AutoConfig`, `AutoModel`,
`AutoModelForSequenceClassification`, `AutoProcessor`, `AutoFeatureExtractor` and `AutoImageProcessor` load saved
models without `trust_remote_code`. Saved models also carry their code, for loading with `trust_remote_code=True` where
the package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_multimodal import FUSION_TYPES, MODALITIES, MultimodalConfig
from .configuration_recurrent import RecurrentEncoderConfig
from .configuration_wavenet import WaveNetConfig
from .feature_extraction_wavenet import WaveNetFeatureExtractor, resample_audio
from .image_processing_multimodal import MultimodalImageProcessor
from .modeling_multimodal import (
    MultimodalForSequenceClassification,
    MultimodalModel,
    MultimodalModelOutput,
    MultimodalPreTrainedModel,
    MultimodalSequenceClassifierOutput,
)
from .modeling_recurrent import RecurrentEncoderModel, RecurrentEncoderPreTrainedModel
from .modeling_wavenet import WaveNetModel, WaveNetPreTrainedModel
from .pipeline_multimodal import PIPELINE_TASK, MultimodalClassificationPipeline, MultimodalPipeline
from .pipeline_retrieval import RETRIEVAL_TASK, GalleryIndex, MultimodalRetrievalPipeline
from .pipeline_zero_shot import ZERO_SHOT_TASK, ZeroShotMultimodalClassificationPipeline
from .processing_multimodal import MultimodalProcessor


__version__ = "0.2.0"


def _register() -> None:
    AutoConfig.register(WaveNetConfig.model_type, WaveNetConfig, exist_ok=True)
    AutoConfig.register(RecurrentEncoderConfig.model_type, RecurrentEncoderConfig, exist_ok=True)
    AutoConfig.register(MultimodalConfig.model_type, MultimodalConfig, exist_ok=True)
    AutoModel.register(WaveNetConfig, WaveNetModel, exist_ok=True)
    AutoModel.register(RecurrentEncoderConfig, RecurrentEncoderModel, exist_ok=True)
    AutoModel.register(MultimodalConfig, MultimodalModel, exist_ok=True)
    AutoModelForSequenceClassification.register(MultimodalConfig, MultimodalForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(WaveNetConfig, WaveNetFeatureExtractor, exist_ok=True)
    # Needs no torchvision: registered for both backends so neither lookup falls back with a warning.
    AutoImageProcessor.register(
        MultimodalConfig,
        image_processor_classes={"pil": MultimodalImageProcessor, "torchvision": MultimodalImageProcessor},
        exist_ok=True,
    )
    AutoProcessor.register(MultimodalConfig, MultimodalProcessor, exist_ok=True)

    # Saved folders carry the code and an `auto_map`, so they also load with `trust_remote_code=True`.
    MultimodalConfig.register_for_auto_class()
    MultimodalModel.register_for_auto_class("AutoModel")
    MultimodalForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    WaveNetConfig.register_for_auto_class()
    WaveNetModel.register_for_auto_class("AutoModel")
    RecurrentEncoderConfig.register_for_auto_class()
    RecurrentEncoderModel.register_for_auto_class("AutoModel")
    WaveNetFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    MultimodalImageProcessor.register_for_auto_class("AutoImageProcessor")
    MultimodalProcessor.register_for_auto_class("AutoProcessor")

    # pipeline("multimodal-classification", model=...) and the tasks of aligned models; a pipeline's save_pretrained
    # writes its task into the config's `custom_pipelines`, for remote-code loading.
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK,
        pipeline_class=MultimodalClassificationPipeline,
        pt_model=AutoModelForSequenceClassification,
        type="multimodal",
    )
    for task, pipeline_class in (
        (RETRIEVAL_TASK, MultimodalRetrievalPipeline),
        (ZERO_SHOT_TASK, ZeroShotMultimodalClassificationPipeline),
    ):
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=AutoModel, type="multimodal")


_register()

__all__ = [
    "FUSION_TYPES",
    "MODALITIES",
    "PIPELINE_TASK",
    "RETRIEVAL_TASK",
    "ZERO_SHOT_TASK",
    "GalleryIndex",
    "MultimodalClassificationPipeline",
    "MultimodalConfig",
    "MultimodalForSequenceClassification",
    "MultimodalImageProcessor",
    "MultimodalModel",
    "MultimodalModelOutput",
    "MultimodalPreTrainedModel",
    "MultimodalPipeline",
    "MultimodalProcessor",
    "MultimodalRetrievalPipeline",
    "MultimodalSequenceClassifierOutput",
    "RecurrentEncoderConfig",
    "RecurrentEncoderModel",
    "RecurrentEncoderPreTrainedModel",
    "WaveNetConfig",
    "WaveNetFeatureExtractor",
    "WaveNetModel",
    "WaveNetPreTrainedModel",
    "ZeroShotMultimodalClassificationPipeline",
    "resample_audio",
]
