"""Property-based fuzzing of malformed inputs: each call gives a valid prediction or a ValueError / TypeError whose
message names the problem; never another exception, a hang or a NaN score."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import pipeline

from conftest import tiny_image_processor, tiny_model
from fuzz_strategies import (
    bad_audios,
    bad_images,
    bad_texts,
    batches,
    GOOD_PNG,
    GOOD_WAV,
    corrupt_image_bytes,
    corrupt_wav_bytes,
    plausible_audios,
    plausible_images,
    plausible_texts,
    sampling_rates,
)
from hf_multimodal import MultimodalProcessor

pytestmark = pytest.mark.slow  # 1,000 generated bad inputs through the processor, model and pipeline

NAMES_THE_PROBLEM = (
    "text", "image", "audio", "sampling", "example", "modalit", "nothing to", "return_tensors", "batch_size",
)
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def check_outcome(call, names_the_problem: tuple[str, ...] | None = None, position: str = "") -> None:
    """`call` succeeds, or raises a ValueError / TypeError whose message names the problem: one of
    `names_the_problem` (the malformed field, where the input has one) and `position` (which example of a list)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except (ValueError, TypeError) as error:
        message = str(error).lower()
        expected = names_the_problem or NAMES_THE_PROBLEM
        assert any(word in message for word in expected), f"error names none of {expected}: {message!r}"
        assert position in message, f"error does not say which example ({position!r}): {message!r}"
        return
    assert result is not None


@FUZZ
@given(drawn=batches())
def test_processor_and_model_on_malformed_inputs(processor, model, drawn):
    arguments, names_the_problem = drawn

    def run():
        batch = processor(**arguments)
        with torch.no_grad():
            logits = model(**batch).logits
        assert torch.isfinite(logits).all(), "NaN or infinite score"
        return logits

    check_outcome(run, names_the_problem)


plausible_clips = st.one_of(
    st.just(GOOD_WAV),
    st.builds(lambda wave, rate: {"array": wave, "sampling_rate": rate}, plausible_audios, st.sampled_from([8000, 16000, 22050])),
)
PIPELINE_FIELDS = {
    "text": (plausible_texts, bad_texts),
    "image": (st.one_of(plausible_images, st.just(GOOD_PNG)), st.one_of(bad_images, corrupt_image_bytes)),
    "audio": (plausible_clips, st.one_of(bad_audios, corrupt_wav_bytes, plausible_audios)),
}


@st.composite
def pipeline_examples(draw):
    """One pipeline input: a dict or a list of 1-3 dicts, plausible, with one malformed field, or malformed as a
    whole (not a dict, unknown keys, nothing to classify); with, for a malformed field, the words of which an error
    must name one, and the position it must name in a list ("example 2:"), else None and ""."""
    malformed_fields = []

    def example(malformed: bool) -> dict:
        keys = draw(st.lists(st.sampled_from(sorted(PIPELINE_FIELDS)), min_size=1, max_size=3, unique=True))
        fields = {key: draw(PIPELINE_FIELDS[key][0]) for key in keys}
        if malformed:
            key = draw(st.sampled_from(keys))
            malformed_fields.append(key)
            fields[key] = draw(PIPELINE_FIELDS[key][1])
            if draw(st.booleans()):
                fields["sampling_rate"] = draw(sampling_rates)
        else:  # a plausible example has something to classify (a blank text alone is "nothing to classify")
            assume(set(fields) != {"text"} or fields["text"].strip())
        return fields

    kind = draw(st.sampled_from(["plausible", "plausible", "malformed_field", "malformed_field", "malformed_whole"]))
    if kind == "malformed_whole":
        inputs = draw(st.sampled_from([{}, {"txt": "seven"}, {"text": None}, 5, "seven", b"\x00", [], [{"video": 1}]]))
        return inputs, None, ""
    size = draw(st.integers(1, 3))
    bad = draw(st.integers(0, size - 1)) if kind == "malformed_field" else None
    examples = [example(index == bad) for index in range(size)]
    if bad is None:
        return (examples[0] if draw(st.booleans()) else examples), None, ""
    # the malformed field (or the sampling rate drawn with it, or the example left with nothing to classify)
    names_the_problem = (*malformed_fields, "sampling", "nothing to classify")
    return (examples[0], names_the_problem, "") if size == 1 and draw(st.booleans()) else (
        examples, names_the_problem, f"example {bad}:")


@pytest.fixture(scope="module")
def classifier(model):
    return pipeline("multimodal-classification", model=model, processor=MultimodalProcessor(
        image_processor=tiny_image_processor(), max_text_length=32))


@FUZZ
@given(drawn=pipeline_examples())
def test_pipeline_on_malformed_inputs(classifier, drawn):
    inputs, names_the_problem, position = drawn

    def run():
        outputs = classifier(inputs, batch_size=2)
        for scores in outputs if isinstance(inputs, list) else [outputs]:
            assert all(math.isfinite(entry["score"]) for entry in scores), "NaN or infinite score"
        json.dumps(outputs)
        return outputs

    check_outcome(run, names_the_problem, position)
