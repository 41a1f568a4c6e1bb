"""pipeline("multimodal-retrieval") and pipeline("zero-shot-multimodal-classification") on a tiny aligned model:
scores equal the model's own embeddings, galleries are indexed once and searched, bad calls are explained, and both
tasks are saved for remote code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import pipeline

from hf_multimodal import (
    GalleryIndex,
    MultimodalModel,
    MultimodalProcessor,
    MultimodalRetrievalPipeline,
    ZeroShotMultimodalClassificationPipeline,
)

from conftest import random_audio, random_image, tiny_config, tiny_image_processor


@pytest.fixture(scope="module")
def aligned_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aligned") / "model"
    torch.manual_seed(0)
    model = MultimodalModel(tiny_config()).eval()
    processor = MultimodalProcessor(image_processor=tiny_image_processor(), max_text_length=16)
    MultimodalRetrievalPipeline(model=model, processor=processor).save_pretrained(folder)
    ZeroShotMultimodalClassificationPipeline(model=model, processor=processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def retriever(aligned_folder):
    return pipeline("multimodal-retrieval", model=str(aligned_folder))


IMAGES = [random_image(seed) for seed in range(6)]


def unit(tensor: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(tensor, dim=-1)


def test_both_tasks_are_saved_for_remote_code(aligned_folder):
    custom = json.loads((aligned_folder / "config.json").read_text())["custom_pipelines"]
    assert custom["multimodal-retrieval"]["impl"] == "pipeline_retrieval.MultimodalRetrievalPipeline"
    assert custom["zero-shot-multimodal-classification"]["pt"] == ["AutoModel"]
    assert (aligned_folder / "pipeline_zero_shot.py").is_file() and (aligned_folder / "pipeline_retrieval.py").is_file()


def test_retrieval_ranks_the_gallery_by_cosine_similarity(retriever):
    gallery = retriever.index(IMAGES, modality="image", batch_size=4)
    assert isinstance(gallery, GalleryIndex) and len(gallery) == 6 and gallery.modality == "image"
    assert np.allclose(np.linalg.norm(gallery.embeddings, axis=1), 1.0, atol=1e-5)
    clip = random_audio(3, 0.4)
    results = retriever({"audio": {"array": clip, "sampling_rate": 16000}}, gallery=gallery, top_k=4)
    assert [hit["index"] for hit in results] != [] and len(results) == 4
    assert [hit["score"] for hit in results] == sorted((hit["score"] for hit in results), reverse=True)
    model, processor = retriever.model, retriever.processor
    with torch.no_grad():
        query = unit(model.get_audio_features(**_audio_inputs(processor, clip)).pooler_output)[0]
        images = unit(model.get_image_features(processor(images=IMAGES)["pixel_values"]).pooler_output)
    expected = (images @ query).tolist()
    for hit in results:
        assert hit["score"] == pytest.approx(expected[hit["index"]], abs=1e-5)
    assert results[0]["index"] == int(np.argmax(expected))


def test_a_query_bank_lowers_each_items_score_by_its_mean_similarity_to_the_bank(retriever):
    gallery = retriever.index(IMAGES, modality="image", batch_size=4)
    clips = [{"array": random_audio(seed, 0.3), "sampling_rate": 16000} for seed in range(4)]
    bank = retriever.index(clips[1:], modality="audio")
    results = retriever({"audio": clips[0]}, gallery=gallery, top_k=6, query_bank=bank)
    query = np.asarray(retriever({"audio": clips[0]})["embedding"])
    expected = gallery.embeddings @ query - (gallery.embeddings @ bank.embeddings.T).mean(axis=1)
    assert [hit["index"] for hit in results] == np.argsort(-expected).tolist()
    for hit in results:
        assert hit["score"] == pytest.approx(expected[hit["index"]], abs=1e-5)
    # the same bank as a list of examples, indexed on the fly
    as_list = retriever({"audio": clips[0]}, gallery=gallery, top_k=6, query_bank=[{"audio": clip} for clip in clips[1:]])
    assert [hit["index"] for hit in as_list] == [hit["index"] for hit in results]


def _audio_inputs(processor, clip):
    batch = processor(audio=[clip], sampling_rate=16000)
    return {"input_values": batch["input_values"], "audio_attention_mask": batch["audio_attention_mask"]}


def test_a_list_gallery_and_a_batch_of_queries(retriever):
    gallery = [{"image": image} for image in IMAGES[:3]]
    queries = [{"text": "a seven"}, {"audio": {"array": random_audio(1, 0.3), "sampling_rate": 16000}}]
    results = retriever(queries, gallery=gallery, top_k=2)
    assert len(results) == 2 and all(len(hits) == 2 for hits in results)
    embedded = retriever({"text": "a seven"})  # without a gallery: the embedding
    assert embedded["modality"] == "text" and np.linalg.norm(embedded["embedding"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r: r.index([], modality="image"), ValueError, "the gallery is empty"),
        (lambda r: r({"text": "a"}, gallery=[{"image": IMAGES[0]}], top_k=3), ValueError, "gallery's size \\(1\\)"),
        (lambda r: r.index([{"image": IMAGES[0]}, {"text": "b"}]), ValueError, "mixes modalities"),
        (lambda r: r.index(IMAGES), ValueError, "pass modality='image'"),
        (lambda r: r.index(IMAGES, modality="video"), ValueError, "modality must be one of"),
        (lambda r: r({"text": "a", "image": IMAGES[0]}, gallery=[{"image": IMAGES[1]}]), ValueError, "exactly one"),
        (lambda r: r({"text": "a"}, top_k=2), ValueError, "top_k needs a gallery"),
        (lambda r: r({"text": "a"}, query_bank=[{"text": "b"}]), ValueError, "query_bank needs a gallery"),
        (lambda r: r({"text": "a"}, gallery=[{"image": IMAGES[0]}], query_bank=[{"image": IMAGES[1]}]), ValueError,
         "the query is text but the query_bank holds image"),
    ],
)
def test_bad_retrieval_calls_are_explained(retriever, call, error, message):
    with pytest.raises(error, match=message):
        call(retriever)


def test_zero_shot_scores_are_the_softmax_of_the_contrastive_logits(aligned_folder):
    classifier = pipeline("zero-shot-multimodal-classification", model=str(aligned_folder))
    labels = ["zero", "one", "two"]
    result = classifier({"image": IMAGES[0]}, candidate_labels=labels, hypothesis_template="the digit {}")
    assert sorted(hit["label"] for hit in result) == sorted(labels) and sum(hit["score"] for hit in result) == pytest.approx(1.0)
    assert [hit["score"] for hit in result] == sorted((hit["score"] for hit in result), reverse=True)
    model, processor = classifier.model, classifier.processor
    with torch.no_grad():
        image = unit(model.get_image_features(processor(images=[IMAGES[0]])["pixel_values"]).pooler_output)
        prompts = processor(text=[f"the digit {label}" for label in labels])
        text = unit(model.get_text_features(prompts["input_ids"], prompts["attention_mask"]).pooler_output)
        expected = (model.logit_scale.exp() * image @ text.T).softmax(-1)[0].tolist()
    for hit in result:
        assert hit["score"] == pytest.approx(expected[labels.index(hit["label"])], abs=1e-5)
    assert len(classifier([{"image": IMAGES[1]}, {"text": "one"}], candidate_labels=labels, top_k=1)[1]) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "pass candidate_labels"),
        ({"candidate_labels": ["only"]}, "at least two labels"),
        ({"candidate_labels": "zero,one"}, "at least two labels"),
        ({"candidate_labels": ["a", "b"], "hypothesis_template": "the digit"}, "must contain '\\{\\}'"),
    ],
)
def test_bad_zero_shot_calls_are_explained(aligned_folder, kwargs, message):
    classifier = pipeline("zero-shot-multimodal-classification", model=str(aligned_folder))
    with pytest.raises(ValueError, match=message):
        classifier({"image": IMAGES[0]}, **kwargs)


def test_zero_shot_needs_a_text_encoder():
    model = MultimodalModel(tiny_config(("image", "audio"))).eval()
    processor = MultimodalProcessor(image_processor=tiny_image_processor())
    classifier = ZeroShotMultimodalClassificationPipeline(model=model, processor=processor)
    with pytest.raises(ValueError, match="no text encoder"):
        classifier({"image": IMAGES[0]}, candidate_labels=["a", "b"])
