"""The GRU / LSTM encoder of tokens and log-mel audio: shapes, padding, Auto classes, inside the multimodal model,
from the training script, and as remote code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from hf_multimodal import (
    MultimodalConfig,
    MultimodalForSequenceClassification,
    RecurrentEncoderConfig,
    RecurrentEncoderModel,
)

from conftest import WITHOUT_THE_PACKAGE
from train import build_model_and_processor, parse_arguments


TINY_TOKENS = {"hidden_size": 32, "num_layers": 2, "embedding_size": 16, "vocab_size": 100, "dropout": 0.0}
TINY_AUDIO = {**TINY_TOKENS, "input_kind": "audio", "sampling_rate": 8000}
CELLS_AND_KINDS = [(cell, kind) for cell in ("gru", "lstm") for kind in ("tokens", "audio")]


def tiny_encoder(cell: str = "gru", input_kind: str = "tokens", seed: int = 0, **kwargs) -> RecurrentEncoderModel:
    torch.manual_seed(seed)
    settings = TINY_AUDIO if input_kind == "audio" else TINY_TOKENS
    return RecurrentEncoderModel(RecurrentEncoderConfig(cell=cell, **{**settings, **kwargs})).eval()


def inputs_for(model: RecurrentEncoderModel, lengths: list[int], padded_to: int, seed: int = 0) -> dict:
    """A right-padded batch for `model`: token ids (1-99) or waveforms, with an attention mask of `lengths`."""
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.arange(padded_to).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    if model.config.input_kind == "tokens":
        ids = torch.randint(1, 100, (len(lengths), padded_to), generator=generator) * mask
        return {"input_ids": ids, "attention_mask": mask}
    values = torch.randn(len(lengths), padded_to, generator=generator) * mask
    return {"input_values": values, "attention_mask": mask}


def padded(inputs: dict, extra: int) -> dict:
    """`inputs` with `extra` more positions of padding (random values for audio, whose mask marks them)."""
    mask = torch.nn.functional.pad(inputs["attention_mask"], (0, extra))
    if "input_ids" in inputs:
        return {"input_ids": torch.nn.functional.pad(inputs["input_ids"], (0, extra)), "attention_mask": mask}
    noise = torch.randn(inputs["input_values"].shape[0], extra)
    return {"input_values": torch.cat([inputs["input_values"], noise], dim=1), "attention_mask": mask}


@pytest.mark.parametrize("cell, input_kind", CELLS_AND_KINDS)
def test_output_shapes_and_hidden_states(cell, input_kind):
    model = tiny_encoder(cell, input_kind)
    length = 1600 if input_kind == "audio" else 7  # 1600 samples at 8 kHz: 20 frames of 10 ms
    inputs = inputs_for(model, [length, length // 2], length)
    outputs = model(**inputs, output_hidden_states=True)
    steps = 20 if input_kind == "audio" else 7
    assert outputs.last_hidden_state.shape == (2, steps, 32)
    assert outputs.pooler_output.shape == (2, 32)
    first_width = 32 if input_kind == "audio" else 16  # front-end projection / token embeddings
    assert [tuple(h.shape) for h in outputs.hidden_states] == [(2, steps, first_width), (2, steps, 32), (2, steps, 32)]
    as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], outputs.last_hidden_state)
    assert model.main_input_name == ("input_values" if input_kind == "audio" else "input_ids")


def test_unidirectional_and_partial_last_hop():
    model = tiny_encoder(input_kind="audio", bidirectional=False, hidden_size=24)
    outputs = model(input_values=torch.randn(3, 1650))  # 20 full hops and a partial one
    assert outputs.last_hidden_state.shape == (3, 21, 24) and outputs.pooler_output.shape == (3, 24)


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("cell, input_kind", CELLS_AND_KINDS)
def test_padding_changes_neither_real_positions_nor_pooled_output(cell, input_kind, pooling):
    model = tiny_encoder(cell, input_kind, pooling=pooling)
    length = 1200 if input_kind == "audio" else 6
    inputs = inputs_for(model, [length, length // 3], length)
    extra = 400 if input_kind == "audio" else 5
    short, long = model(**inputs), model(**padded(inputs, extra))
    torch.testing.assert_close(short.pooler_output, long.pooler_output, atol=1e-5, rtol=1e-4)
    steps = short.last_hidden_state.shape[1]
    torch.testing.assert_close(short.last_hidden_state[0], long.last_hidden_state[0, :steps], atol=1e-5, rtol=1e-4)
    # without a mask the padding is read as input, and the result changes
    unmasked = {name: value for name, value in padded(inputs, extra).items() if name != "attention_mask"}
    assert not torch.allclose(model(**unmasked).pooler_output[1], short.pooler_output[1], atol=1e-3)


def test_last_pooling_reads_the_final_state_of_each_direction():
    model = tiny_encoder(cell="lstm", pooling="last")
    inputs = inputs_for(model, [5, 3], 5)
    outputs = model(**inputs, output_hidden_states=True)
    last_layer = outputs.hidden_states[-1]  # before the layer norm
    forward_end, backward_start = last_layer[1, 2, :16], last_layer[1, 0, 16:]
    expected = model.layer_norm(torch.cat([forward_end, backward_start]))
    torch.testing.assert_close(outputs.pooler_output[1], expected)


@pytest.mark.parametrize("cell, input_kind", CELLS_AND_KINDS)
def test_gradients_reach_every_parameter(cell, input_kind):
    model = tiny_encoder(cell, input_kind).train()
    length = 800 if input_kind == "audio" else 6
    model(**inputs_for(model, [length, length // 2], length)).pooler_output.square().sum().backward()
    without_gradient = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without_gradient


def test_initialisation_orthogonal_recurrence_and_open_forget_gate():
    model = tiny_encoder(cell="lstm")
    layer = model.layers[0]
    for block in layer.weight_hh_l0.detach().chunk(4):
        torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    bias = layer.bias_ih_l0.detach()
    assert torch.all(bias[16:32] == 1.0) and torch.all(bias[:16] == 0.0) and torch.all(layer.bias_hh_l0 == 0.0)
    assert torch.all(model.embeddings.weight[0] == 0.0)  # the padding token


def test_bad_settings_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"cell must be one of 'gru', 'lstm'; got 'rnn'"):
        RecurrentEncoderConfig(cell="rnn")
    with pytest.raises(ValueError, match=r"input_kind must be one of 'tokens', 'audio'; got 'image'"):
        RecurrentEncoderConfig(input_kind="image")
    with pytest.raises(ValueError, match=r"pooling must be one of 'mean', 'last'"):
        RecurrentEncoderConfig(pooling="max")
    with pytest.raises(ValueError, match="must be even for a bidirectional encoder"):
        RecurrentEncoderConfig(hidden_size=33)
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1"):
        RecurrentEncoderConfig(num_layers=0)
    with pytest.raises(ValueError, match="dropout must be a probability"):
        RecurrentEncoderConfig(dropout=1.0)
    with pytest.raises(ValueError, match="hop_ms .* at most window_ms"):  # the WaveNet front-end's own check
        RecurrentEncoderConfig(input_kind="audio", hop_ms=30.0)


def test_wrong_inputs_are_refused():
    text, audio = tiny_encoder(), tiny_encoder(input_kind="audio")
    with pytest.raises(ValueError, match="text .* recurrent encoder: pass input_ids"):
        text(input_values=torch.randn(1, 800))
    with pytest.raises(ValueError, match="audio .* recurrent encoder: pass input_values"):
        audio(input_ids=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="right-padded"):
        text(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(ValueError, match="mono audio"):
        audio(input_values=torch.randn(1, 2, 800))


@pytest.mark.parametrize("cell, input_kind", CELLS_AND_KINDS)
def test_save_and_load_through_the_auto_classes(cell, input_kind, tmp_path):
    model = tiny_encoder(cell, input_kind, pooling="last")
    length = 800 if input_kind == "audio" else 6
    inputs = inputs_for(model, [length, length // 2], length)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, RecurrentEncoderConfig) and (config.cell, config.input_kind) == (cell, input_kind)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, RecurrentEncoderModel)
    torch.testing.assert_close(loaded(**inputs).pooler_output, model(**inputs).pooler_output)


def recurrent_multimodal(cell: str = "gru", **kwargs) -> MultimodalForSequenceClassification:
    """A text + audio classifier with recurrent encoders given as dicts (their input_kind from the sub-config key)."""
    torch.manual_seed(0)
    config = MultimodalConfig(
        text_config={"model_type": "recurrent_encoder", "cell": cell, **TINY_TOKENS},
        vision_config=None,
        audio_config={"model_type": "recurrent_encoder", "cell": cell, **TINY_TOKENS, "sampling_rate": 8000, **kwargs},
        fusion_hidden_size=32,
        fusion_num_heads=2,
        num_labels=3,
    )
    return MultimodalForSequenceClassification(config).eval()


def multimodal_inputs() -> dict:
    generator = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    audio_mask = (torch.arange(2400).unsqueeze(0) < torch.tensor([[2400], [1700], [900]])).long()
    return {
        "input_ids": torch.randint(1, 100, (3, 5), generator=generator) * mask,
        "attention_mask": mask,
        "input_values": torch.randn(3, 2400, generator=generator) * audio_mask,
        "audio_attention_mask": audio_mask,
        "has_text": torch.tensor([True, True, False]),
    }


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_inside_the_multimodal_classifier_for_text_and_audio(cell):
    model = recurrent_multimodal(cell)
    assert model.config.text_config.input_kind == "tokens" and model.config.audio_config.input_kind == "audio"
    assert isinstance(model.get_encoder("text"), RecurrentEncoderModel)
    assert isinstance(model.get_encoder("audio"), RecurrentEncoderModel)
    inputs = multimodal_inputs()
    logits = model(**inputs).logits
    # padding more audio changes nothing inside the full model either
    more = dict(inputs, input_values=torch.cat([inputs["input_values"], torch.randn(3, 500)], dim=1))
    more["audio_attention_mask"] = torch.nn.functional.pad(inputs["audio_attention_mask"], (0, 500))
    torch.testing.assert_close(model(**more).logits, logits, atol=1e-5, rtol=1e-4)
    model.train()
    model(**inputs, labels=torch.tensor([0, 1, 2])).loss.backward()
    for modality in ("text", "audio"):
        encoder = model.get_encoder(modality)
        assert encoder.layers[0].weight_hh_l0.grad.abs().sum() > 0, modality
    assert model.get_encoder("text").embeddings.weight.grad.abs().sum() > 0


def test_audio_slot_defaults_to_audio_input_and_mismatches_are_refused():
    config = MultimodalConfig(text_config=None, vision_config=None, audio_config={"model_type": "recurrent_encoder"})
    assert config.audio_config.input_kind == "audio" and config.audio_config.sampling_rate == 16000
    expected = "audio_config is a recurrent_encoder with input_kind 'tokens': set input_kind='audio'"
    with pytest.raises(ValueError, match=expected):
        MultimodalConfig(text_config=None, audio_config=RecurrentEncoderConfig())
    with pytest.raises(ValueError, match="vision_config is a recurrent_encoder .* read tokens or audio only"):
        MultimodalConfig(vision_config={"model_type": "recurrent_encoder"})


def test_multimodal_save_load_and_from_backbones(tmp_path):
    model = recurrent_multimodal("lstm")
    inputs = multimodal_inputs()
    model.save_pretrained(tmp_path / "classifier")
    saved = json.loads((tmp_path / "classifier" / "config.json").read_text())
    assert saved["audio_config"]["model_type"] == "recurrent_encoder" and saved["audio_config"]["cell"] == "lstm"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier").eval()
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    # a pretrained recurrent encoder folder is copied in by from_backbones
    model.get_encoder("audio").save_pretrained(tmp_path / "audio_encoder")
    rebuilt = MultimodalForSequenceClassification.from_backbones(
        text=None, image=None, audio=tmp_path / "audio_encoder", fusion_hidden_size=32, num_labels=3
    )
    assert rebuilt.config.backbones == {"audio": "audio_encoder"}
    for name, value in model.get_encoder("audio").state_dict().items():
        torch.testing.assert_close(rebuilt.get_encoder("audio").state_dict()[name], value)


def test_training_script_builds_recurrent_encoders_from_json_options(tmp_path):
    text = json.dumps({"model_type": "recurrent_encoder", **TINY_TOKENS, "vocab_size": 30522})
    audio = json.dumps({"model_type": "recurrent_encoder", "cell": "lstm", "sampling_rate": 8000, "hidden_size": 32})
    model_args, data_args, _ = parse_arguments(
        ["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "run"), "--modalities", "text", "audio",
         "--text_config", text, "--audio_config", audio, "--fusion_hidden_size", "32"]
    )
    model, processor = build_model_and_processor(model_args, data_args, ["a", "b"])
    assert model.config.text_config.input_kind == "tokens" and model.config.audio_config.cell == "lstm"
    assert processor.feature_extractor.sampling_rate == 8000  # follows the new encoder's config
    batch = processor(text=["one two", "three"], audio=[torch.randn(8000).numpy()] * 2, sampling_rate=8000)
    assert model(**batch).logits.shape == (2, 2)


REMOTE_CODE_SCRIPT = WITHOUT_THE_PACKAGE + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    folder, expected_file = sys.argv[1], sys.argv[2]
    expected = torch.load(expected_file, weights_only=False)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    torch.testing.assert_close(model(**expected["inputs"]).logits, expected["logits"])
    encoders = [model.get_encoder(modality) for modality in ("text", "audio")]
    assert all(type(e).__name__ == "RecurrentEncoderModel" for e in encoders), encoders
    assert all(type(e).__module__.startswith("transformers_modules") for e in encoders)
    assert not [name for name in sys.modules if name.startswith("hf_multimodal")]
    print("REMOTE-CODE-OK", type(encoders[1]).__module__)
    """
)


@pytest.mark.slow
def test_recurrent_encoders_load_as_remote_code_in_a_fresh_process(tmp_path):
    model = recurrent_multimodal("lstm", pooling="last")
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    assert {"configuration_recurrent.py", "modeling_recurrent.py"} <= {path.name for path in folder.iterdir()}
    inputs = multimodal_inputs()
    torch.save({"inputs": inputs, "logits": model(**inputs).logits.detach()}, tmp_path / "expected.pt")
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "expected.pt")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
             "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK transformers_modules" in result.stdout
