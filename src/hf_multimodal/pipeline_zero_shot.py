"""`pipeline("zero-shot-multimodal-classification")`: classify an image, a recording or a text against label prompts
written at call time, with a model whose modalities share one embedding space (as CLAP's
`zero-shot-audio-classification` and CLIP's `zero-shot-image-classification` do)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import BatchFeature

from .pipeline_multimodal import MultimodalPipeline
from .pipeline_retrieval import single_modality_embeddings


ZERO_SHOT_TASK = "zero-shot-multimodal-classification"


class ZeroShotMultimodalClassificationPipeline(MultimodalPipeline):
    r"""
    Zero-shot classification: each candidate label becomes a text prompt (`hypothesis_template.format(label)`), and an
    example (an image, a recording or a text: one modality) is scored by the softmax over the labels of
    `logit_scale.exp() * cos(example, prompt)`, the model's contrastive logits. No label was trained on; the model only
    has to have been aligned (`scripts/train.py --objective contrastive`) with a text encoder.

    Example:

    ```python
    >>> import hf_multimodal  # registers the task
    >>> from transformers import pipeline
    >>> classifier = pipeline("zero-shot-multimodal-classification", model="outputs/pairs/aligned")
    >>> classifier({"audio": "seven.wav"}, candidate_labels=["zero", "one", "seven"], hypothesis_template="{}")
    [{'label': 'seven', 'score': 0.91}, {'label': 'one', 'score': 0.06}, {'label': 'zero', 'score': 0.03}]
    ```
    """

    def __call__(self, inputs: Any = None, **kwargs) -> list | Iterator:
        """
        Args:
            inputs (`dict`, `list[dict]`, dataset or generator of dicts): Examples with one modality each.
            candidate_labels (`list[str]`): The labels to choose from (at least two).
            hypothesis_template (`str`, *optional*, defaults to `"{}"`): Turns a label into its prompt, e.g.
                `"a recording of the digit {}"`; must contain `{}`.
            top_k (`int`, *optional*): Labels per example (all by default).
            batch_size, sampling_rate, timeout: As for [`MultimodalPipeline`].

        Returns:
            Per example, a list of `{"label", "score"}`, best first.
        """
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        candidate_labels: Sequence[str] | None = None,
        hypothesis_template: str = "{}",
        top_k: int | None = None,
        **kwargs,
    ):
        preprocess_params, _, _ = super()._sanitize_parameters(**kwargs)
        if candidate_labels is None:
            # Also reached when the pipeline is built: the labels come with each call.
            return preprocess_params, {}, {}
        if isinstance(candidate_labels, str) or len(candidate_labels) < 2:
            raise ValueError(
                f"candidate_labels must be a list of at least two labels, got {candidate_labels!r}: e.g. "
                "candidate_labels=['cat', 'dog']."
            )
        if not all(isinstance(label, str) and label.strip() for label in candidate_labels):
            raise ValueError("every candidate label must be a non-empty string.")
        if not isinstance(hypothesis_template, str) or "{}" not in hypothesis_template:
            raise ValueError(
                f"hypothesis_template must contain '{{}}' where the label goes, got {hypothesis_template!r}."
            )
        if "text" not in self.model.config.modalities:
            raise ValueError("zero-shot classification reads label prompts as text: this model has no text encoder.")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None (all labels), got {top_k!r}.")
        prompts = [hypothesis_template.format(label) for label in candidate_labels]
        return preprocess_params, {"prompts": prompts}, {"candidate_labels": list(candidate_labels), "top_k": top_k}

    def _forward(self, model_inputs: BatchFeature, prompts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        if prompts is None:
            raise ValueError("pass candidate_labels=[...] (at least two labels) to classify against.")
        examples, _ = single_modality_embeddings(self.model, model_inputs)
        with self._processor_lock:
            prompt_inputs = self.processor(text=list(prompts), return_tensors="pt").to(self.device)
        labels, _ = single_modality_embeddings(self.model, prompt_inputs)
        scale = self.model.base_model.logit_scale.clamp(max=torch.log(torch.tensor(100.0))).exp()
        return {"logits": scale * examples @ labels.T}

    def postprocess(
        self, model_outputs: dict[str, torch.Tensor], candidate_labels: Sequence[str] = (), top_k: int | None = None
    ) -> list[dict[str, Any]]:
        scores = model_outputs["logits"][0].float().softmax(dim=-1).tolist()
        ranked = sorted(zip(candidate_labels, scores), key=lambda item: -item[1])
        return [{"label": label, "score": score} for label, score in ranked[:top_k]]


__all__ = ["ZERO_SHOT_TASK", "ZeroShotMultimodalClassificationPipeline"]
