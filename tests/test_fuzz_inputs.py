"""Property-based fuzzing of malformed inputs: each call gives a valid prediction or a ValueError / TypeError whose
message names the problem; never another exception, a hang or a NaN score."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from fuzz_strategies import batches
from conftest import tiny_model

NAMES_THE_PROBLEM = ("text", "image", "audio", "sampling", "example", "modalit", "nothing to process", "return_tensors")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def check_outcome(call) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except (ValueError, TypeError) as error:
        message = str(error)
        assert any(word in message.lower() for word in NAMES_THE_PROBLEM), f"unhelpful error: {message!r}"
        return
    assert result is not None


@FUZZ
@given(arguments=batches())
def test_processor_and_model_on_malformed_inputs(processor, model, arguments):
    def run():
        batch = processor(**arguments)
        with torch.no_grad():
            logits = model(**batch).logits
        assert torch.isfinite(logits).all(), "NaN or infinite score"
        return logits

    check_outcome(run)
