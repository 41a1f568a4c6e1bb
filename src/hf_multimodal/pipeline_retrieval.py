"""`pipeline("multimodal-retrieval")`: embed examples in the space an aligned model shares between its modalities,
index a gallery with a FAISS index (through `datasets`), and rank the gallery for queries of any modality."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature

from .configuration_multimodal import MODALITIES
from .pipeline_multimodal import MultimodalPipeline


RETRIEVAL_TASK = "multimodal-retrieval"
_UNSET = object()


def single_modality_embeddings(model, model_inputs: BatchFeature) -> tuple[torch.Tensor, torch.Tensor]:
    """The L2-normalised embedding, in the space the modalities share, of each example of a processed batch, and the
    index of its modality in `model.config.modalities`; every example must have exactly one modality (a query, a
    gallery item or a zero-shot input)."""
    base = model.base_model
    outputs = base(**model_inputs, return_dict=True)
    counts = outputs.presence.sum(dim=1)
    if bool((counts != 1).any()):
        rows = (counts != 1).nonzero().flatten().tolist()
        raise ValueError(
            f"examples {rows} have {counts[rows].tolist()} modalities: a query, a gallery item or a zero-shot input is "
            "embedded from exactly one modality (e.g. {'audio': clip}); split the others into separate examples."
        )
    which = outputs.presence.float().argmax(dim=1)
    embeds = [getattr(outputs, f"{m}_embeds") for m in base.config.modalities]
    stacked = torch.stack([e if e is not None else torch.zeros_like(outputs.fused_embeds) for e in embeds], dim=1)
    embeddings = stacked[torch.arange(stacked.shape[0], device=stacked.device), which]
    return torch.nn.functional.normalize(embeddings.float(), dim=-1), which


class GalleryIndex:
    r"""
    A gallery embedded by [`MultimodalRetrievalPipeline.index`]: unit-norm embeddings of one modality in a
    `datasets.Dataset` column with a FAISS inner-product index, so the top-k by cosine similarity is one FAISS search.

    FAISS (through `datasets`' `add_faiss_index`) is the maintained library for nearest-neighbour search: the default
    `IndexFlatIP` is exact; `string_factory` (e.g. `"HNSW32"` or `"IVF256,Flat"`) trades exactness for speed on
    galleries of millions, and `datasets` can save the index with the embeddings. Needs `pip install
    hf_multimodal[retrieval]` (datasets, faiss-cpu).

    Attributes:
        modality (`str`): The gallery's modality.
        embeddings (`np.ndarray` of shape `(gallery_size, fusion_hidden_size)`): Unit-norm float32 embeddings.
    """

    def __init__(self, embeddings: np.ndarray, modality: str, string_factory: str | None = None):
        try:
            import datasets
            import faiss
        except ImportError as error:
            raise ImportError(
                "indexing a gallery needs datasets and faiss: pip install 'hf_multimodal[retrieval]' (or datasets "
                "faiss-cpu)."
            ) from error
        self.modality = modality
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._dataset = datasets.Dataset.from_dict({"embeddings": self.embeddings})
        self._dataset.add_faiss_index(
            "embeddings", string_factory=string_factory, metric_type=faiss.METRIC_INNER_PRODUCT
        )

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(
        self, queries: np.ndarray, top_k: int, query_bank: GalleryIndex | None = None
    ) -> list[list[dict[str, Any]]]:
        """
        The `top_k` gallery items closest to each query (rows of unit-norm embeddings), best first, as
        `{"index", "score"}` with the cosine similarity as score.

        With `query_bank`, typical queries embedded beforehand (e.g. training examples of the queries' modality),
        the score of a gallery item is its cosine similarity to the query minus its mean cosine similarity to the
        bank's items: an item close to every query (a *hub*, frequent when the gallery comes from a domain the model
        has not seen, such as the recordings of a voice never heard) no longer takes the first rank for most
        queries. This is centering the queries on the bank's mean embedding (Suzuki et al., 2013, "Centering
        similarity measures to reduce hubs"; the mean form of Bogolin et al., 2022, "Cross Modal Retrieval with
        Querybank Normalisation"). It changes the ranking, so it is an option (its effect on the demo's unseen voice:
        README, "Retrieval and zero-shot classification").
        """
        if not 1 <= top_k <= len(self):
            raise ValueError(f"top_k is {top_k} but the gallery holds {len(self)} items: pass 1 <= top_k <= {len(self)}.")
        queries = np.asarray(queries, dtype=np.float32)
        if query_bank is not None:
            queries = np.ascontiguousarray(queries - query_bank.embeddings.mean(axis=0, keepdims=True))
        found = self._dataset.search_batch("embeddings", queries, k=top_k)
        return [
            [{"index": int(index), "score": float(score)} for score, index in zip(scores, indices)]
            for scores, indices in zip(found.total_scores, found.total_indices)
        ]


class MultimodalRetrievalPipeline(MultimodalPipeline):
    r"""
    Retrieval across modalities with a model whose modalities share one embedding space (aligned by contrastive
    pre-training: `scripts/train.py --objective contrastive`): a query in one modality ranks a gallery in another
    (audio -> image, image -> audio, text -> image, text -> audio, or within one modality).

    `retriever.index(gallery)` embeds a gallery in batches and returns a [`GalleryIndex`] to search many times;
    `retriever(query, gallery=..., top_k=5)` ranks a gallery (an index, or a list / `datasets` column, embedded on
    the fly) for one query or a list of queries. Without `gallery`, each example gives its embedding.

    Queries and gallery items are examples as for every [`MultimodalPipeline`], with exactly one modality each:
    `{"audio": clip}`, `{"image": "photo.png"}`, `{"text": "a cat"}`.

    Example:

    ```python
    >>> import hf_multimodal  # registers the task
    >>> from transformers import pipeline
    >>> retriever = pipeline("multimodal-retrieval", model="outputs/pairs/aligned")
    >>> gallery = retriever.index(test_split["image"], modality="image")   # a datasets column of images
    >>> retriever({"audio": "seven.wav"}, gallery=gallery, top_k=2)
    [{'index': 41, 'score': 0.83}, {'index': 7, 'score': 0.81}]
    ```
    """

    def __call__(self, inputs: Any = None, **kwargs) -> list | Iterator:
        """
        Rank `gallery` for each query, or embed the examples when no gallery is given.

        Args:
            inputs (`dict` or `list[dict]` or dataset / generator of dicts): The query or queries.
            gallery ([`GalleryIndex`], or a list of examples, *optional*): What to rank.
            top_k (`int`, *optional*, defaults to 5): Results per query.
            query_bank ([`GalleryIndex`], or a list of examples, *optional*): Typical queries of the queries' modality
                (e.g. training examples): each gallery item's mean similarity to them is subtracted from its score,
                so that items close to every query do not crowd the top ranks ([`GalleryIndex.search`]).
            batch_size, sampling_rate, timeout: As for [`MultimodalPipeline`].

        Returns:
            Per query, a list of `{"index", "score"}` (cosine similarity, less the item's mean similarity to the
            `query_bank` when one is given), best first; without `gallery`, per example, `{"modality", "embedding"}`
            (a unit-norm list of floats).
        """
        for name in ("gallery", "query_bank"):
            if kwargs.get(name) is not None and not isinstance(kwargs[name], GalleryIndex):
                kwargs[name] = self.index(kwargs[name], batch_size=kwargs.get("batch_size") or 32)
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self, gallery: GalleryIndex | None = None, top_k: Any = _UNSET, query_bank: GalleryIndex | None = None,
        **kwargs,
    ):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if query_bank is not None and gallery is None:
            raise ValueError("query_bank needs a gallery to rank: pass gallery=retriever.index(items) or a list.")
        if top_k is not _UNSET:
            if gallery is None:
                raise ValueError("top_k needs a gallery to rank: pass gallery=retriever.index(items) or a list.")
            if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= len(gallery):
                raise ValueError(
                    f"top_k must be an integer from 1 to the gallery's size ({len(gallery)}), got {top_k!r}: lower it "
                    "or give a larger gallery."
                )
        if gallery is not None:
            postprocess_params = {
                "gallery": gallery, "top_k": min(5, len(gallery)) if top_k is _UNSET else top_k, "query_bank": query_bank
            }
        return preprocess_params, forward_params, postprocess_params

    def index(
        self,
        gallery: Sequence[Any],
        modality: str | None = None,
        batch_size: int = 32,
        string_factory: str | None = None,
    ) -> GalleryIndex:
        """
        Embed `gallery` in batches and index it.

        Args:
            gallery (`Sequence`): Examples with one modality each (`[{"image": ...}, ...]`), or raw values of
                `modality` (e.g. a `datasets` column: `dataset["image"]`).
            modality (`str`, *optional*): The modality of raw values; required for them.
            batch_size (`int`, *optional*, defaults to 32): Items per forward pass.
            string_factory (`str`, *optional*): A FAISS index description (default: exact `IndexFlatIP`).
        """
        items = list(gallery)
        if not items:
            raise ValueError("the gallery is empty: give at least one item to rank.")
        if modality is not None:
            if modality not in MODALITIES:
                raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}.")
            items = [{modality: item} for item in items]
        elif not all(isinstance(item, dict) and set(item) & set(MODALITIES) for item in items):
            raise ValueError(
                "gallery items must be examples such as {'image': ...}; for raw values (e.g. dataset['image']) pass "
                "modality='image'."
            )
        embeddings, modalities = [], set()
        for output in super().__call__(items, batch_size=batch_size):
            embeddings.append(output["embedding"])
            modalities.add(output["modality"])
        if len(modalities) > 1:
            raise ValueError(f"the gallery mixes modalities {sorted(modalities)}: index one modality per gallery.")
        return GalleryIndex(np.asarray(embeddings), modalities.pop(), string_factory=string_factory)

    def _forward(self, model_inputs: BatchFeature) -> dict[str, torch.Tensor]:
        embeddings, modality = single_modality_embeddings(self.model, model_inputs)
        return {"embeddings": embeddings, "modality": modality}

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        gallery: GalleryIndex | None = None,
        top_k: int = 5,
        query_bank: GalleryIndex | None = None,
    ):
        embedding = model_outputs["embeddings"][0].cpu().numpy()
        modality = self.model.config.modalities[int(model_outputs["modality"][0])]
        if gallery is None:
            return {"modality": modality, "embedding": embedding.tolist()}
        if query_bank is not None and query_bank.modality != modality:
            raise ValueError(
                f"the query is {modality} but the query_bank holds {query_bank.modality}: a query bank holds typical "
                f"queries of the queries' modality; index {modality} examples for it (e.g. training examples)."
            )
        return gallery.search(embedding[None], top_k, query_bank=query_bank)[0]


__all__ = ["RETRIEVAL_TASK", "GalleryIndex", "MultimodalRetrievalPipeline", "single_modality_embeddings"]
