"""scripts/convert_speech_embedding.py: openwakeword's ONNX copy of Google's speech_embedding network, converted into
a WaveNet audio encoder, computes what the ONNX graphs compute, and scripts/train.py trains around it frozen (its
outputs computed once, by the frozen-encoder cache) or at its own learning rate."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_speech_embedding import convert, default_onnx_file
from safetensors.torch import load_file
from torch.nn import functional as F
from train import FEATURE_ENCODER_PART, build_model_and_processor, build_trainer, evaluate_split, parse_arguments
from transformers import AutoFeatureExtractor, AutoModel, TrainerCallback, TrainingArguments

from hf_multimodal.feature_cache import FEATURE_ROW_COLUMNS
from hf_multimodal.trainer import encoder_part

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("openwakeword", reason="bash scripts/setup_env.sh test installs openwakeword==0.5.1")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert(tmp_path_factory.mktemp("speech_embedding"), {"sampling_rate": 16000, "hidden_size": 32})


def onnx_session(name: str):
    return ort.InferenceSession(str(default_onnx_file().with_name(name)), providers=["CPUExecutionProvider"])


def test_the_converted_encoder_computes_what_openwakeword_computes(converted):
    """The log-mel input and the 96-dim embeddings equal those of openwakeword's two ONNX graphs, which read 16-bit
    audio at 16 kHz, in windows of 76 mel frames every 8."""
    model = AutoModel.from_pretrained(converted).eval()
    time = np.arange(12800) / 16000
    clip = np.sin(2 * np.pi * (300 + 900 * time) * time) * np.hanning(12800) + 0.05 * np.random.default_rng(0).standard_normal(12800)
    clip = torch.tensor(clip, dtype=torch.float32)[None]
    log_mel = model.frontend.log_mel(clip, None)
    # openwakeword's mel graph frames the clip its way: pad so that its frames are the model's (causal, with the
    # 68-frame context of silence), at the level the model brings each clip to
    level = 2000.0 / clip.square().mean().sqrt()
    padded = F.pad(clip * level, (68 * 160 + 296, 56)).numpy()
    expected_mel = onnx_session("melspectrogram.onnx").run(None, {"input": padded})[0].squeeze() / 10 + 2
    np.testing.assert_allclose(log_mel[0].numpy(), expected_mel, atol=1e-4)

    windows = np.stack([expected_mel[i : i + 76] for i in range(0, expected_mel.shape[0] - 75, 8)])[..., None]
    expected = onnx_session("embedding_model.onnx").run(None, {"input_1": windows.astype(np.float32)})[0]
    with torch.no_grad():
        embeddings = model.frontend.feature_encoder_outputs(clip)[0]  # the stack over a few context frames
    assert embeddings.shape == (10, 96)
    np.testing.assert_allclose(embeddings.numpy(), expected.reshape(10, 96), atol=2e-3, rtol=1e-4)


def test_the_folder_holds_the_encoder_and_its_feature_extractor(converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["frontend"] == "speech_embedding" and config["hidden_size"] == 32
    assert AutoFeatureExtractor.from_pretrained(converted).sampling_rate == 16000


def test_a_conversion_repeats_with_its_seed_and_leaves_the_callers_random_state(converted, tmp_path):
    """The layers above the stack start at random: drawn from the seed, so that the runs started from the folder
    repeat (they differed from their first step before)."""
    config = {"sampling_rate": 16000, "hidden_size": 32}
    state = torch.random.get_rng_state()
    again, other = convert(tmp_path / "again", config), convert(tmp_path / "other", config, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    weights = [load_file(folder / "model.safetensors") for folder in (converted, again, other)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    differ = {name for name in weights[0] if not torch.equal(weights[0][name], weights[2][name])}
    assert "frontend.projection.weight" in differ and not any("feature_encoder" in name for name in differ)


def test_train_freezes_the_pretrained_stack_and_trains_the_rest(converted, tmp_path):
    def build(*options):
        model_args, data_args, _ = parse_arguments(
            ["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "run"), "--modalities", "audio",
             "--fusion_hidden_size", "32", *options]
        )  # fmt: skip
        return build_model_and_processor(model_args, data_args, ["a", "b"])

    model, processor = build("--audio_model", str(converted), "--freeze_feature_encoder")
    encoder = model.get_encoder("audio")
    assert not any(p.requires_grad for p in encoder.frontend.feature_encoder.parameters())
    assert encoder.frontend.projection.weight.requires_grad and encoder.layers[0].dilated_conv.weight.requires_grad
    loaded = AutoModel.from_pretrained(converted)
    torch.testing.assert_close(encoder.frontend.feature_encoder[0].weight, loaded.frontend.feature_encoder[0].weight)
    assert processor.feature_extractor.sampling_rate == 16000
    with pytest.raises(ValueError, match="needs a WaveNet audio encoder with a feature encoder.*a WaveNetModel with frontend='mfcc'"):
        build("--audio_config", '{"frontend": "mfcc", "hidden_size": 32}', "--freeze_feature_encoder")
    recurrent = '{"model_type": "recurrent_encoder", "sampling_rate": 8000, "hidden_size": 32}'
    with pytest.raises(ValueError, match="needs a WaveNet audio encoder with a feature encoder.*RecurrentEncoderModel"):
        build("--audio_config", recurrent, "--freeze_feature_encoder")
    with pytest.raises(ValueError, match="--feature_encoder_learning_rate needs a WaveNet audio encoder with a feature"):
        build("--audio_config", '{"frontend": "mfcc", "hidden_size": 32}', "--feature_encoder_learning_rate", "3e-4")
    with pytest.raises(ValueError, match="a frozen stack does not learn. Drop one of them"):
        build("--audio_model", str(converted), "--freeze_feature_encoder", "--feature_encoder_learning_rate", "3e-4")
    model, _ = build("--audio_model", str(converted), "--feature_encoder_trainable_blocks", "1")
    learning = [any(p.requires_grad for p in block.parameters()) for block in
                model.get_encoder("audio").frontend.feature_encoder_blocks()]  # fmt: skip
    assert learning == [False, False, False, False, True]
    with pytest.raises(ValueError, match="--feature_encoder_trainable_blocks must be between 1 and 4, got 5"):
        build("--audio_model", str(converted), "--feature_encoder_trainable_blocks", "5")
    with pytest.raises(ValueError, match="a frozen stack has no learning blocks. Drop one of them"):
        build("--audio_model", str(converted), "--freeze_feature_encoder", "--feature_encoder_trainable_blocks", "2")
    with pytest.raises(ValueError, match="--feature_encoder_trainable_blocks needs a WaveNet audio encoder"):
        build("--audio_config", '{"frontend": "mfcc", "hidden_size": 32}', "--feature_encoder_trainable_blocks", "2")


@pytest.mark.slow
def test_training_reads_the_frozen_stack_from_the_cache_with_the_metrics_of_the_stack(converted, data, tmp_path):
    from train import build_trainer, evaluate_split

    from test_training import tiny_arguments

    def trainer_for(*options: str):
        arguments = tiny_arguments(
            data, tmp_path / "run", max_steps=3, eval_strategy="no", save_strategy="no", audio_config=None
        )
        options = ("--audio_model", str(converted), "--freeze_feature_encoder", *options)
        return build_trainer(*parse_arguments([*arguments, "--feature_cache_dir", str(tmp_path / "cache"), *options]))

    cached, splits = trainer_for()
    plain, plain_splits = trainer_for("--cache_frozen_features", "False")
    assert len(list((tmp_path / "cache").iterdir())) == 3  # the stack's outputs over train, validation and test
    batch = next(iter(cached.get_train_dataloader()))
    assert batch["audio_feature_encoder_outputs"].shape[-1] == 96 and "input_values" not in batch
    assert "input_values" in next(iter(plain.get_train_dataloader()))
    drop = ("text", "image", "audio")
    with_cache, without = evaluate_split(cached, splits.test, drop), evaluate_split(plain, plain_splits.test, drop)
    for variant, (metrics, predictions, _) in without.items():  # test metrics and every ablation
        assert with_cache[variant][0] == metrics and (with_cache[variant][1] == predictions).all()
    stack = cached.model.get_encoder("audio").frontend.feature_encoder
    before = {name: value.clone() for name, value in stack.state_dict().items()}
    projection = cached.model.get_encoder("audio").frontend.projection.weight.clone()
    cached.train()  # the rest of the audio encoder learns from the cached outputs; the stack's weights are checked
    assert all(torch.equal(value, before[name]) for name, value in stack.state_dict().items())
    assert not torch.equal(cached.model.get_encoder("audio").frontend.projection.weight, projection)


@pytest.mark.slow
def test_training_reads_the_lower_blocks_over_augmented_copies_from_the_cache(converted, data, tmp_path):
    """`--feature_encoder_trainable_blocks 2 --augment audio --augment_copies 2`: the lower blocks' outputs over each
    copy of the training split and over the evaluation splits are cached (4 tables), the epochs read the copies in
    turn, and the top blocks learn while the lower ones keep their weights."""
    from test_training import tiny_arguments

    options = ["--audio_model", str(converted), "--feature_encoder_trainable_blocks", "2", "--augment", "audio",
               "--augment_copies", "2", "--feature_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    arguments = tiny_arguments(
        data, tmp_path / "run", max_steps=3, eval_strategy="no", save_strategy="no", audio_config=None
    )
    trainer, _ = build_trainer(*parse_arguments([*arguments, *options]))
    assert len(list((tmp_path / "cache").iterdir())) == 4  # train twice, validation, test
    rows = trainer.train_dataset[FEATURE_ROW_COLUMNS["audio"]]
    assert all(len(copies) == 2 for copies in rows)
    batches = []
    for epoch in (0, 1, 2):
        trainer.data_collator.augmentation.epoch = epoch
        batches.append(trainer.data_collator([trainer.train_dataset[row] for row in range(4)]))
    outputs = [batch["audio_feature_encoder_outputs"] for batch in batches]
    assert outputs[0].shape[2:] == (72, 4) and "input_values" not in batches[0]
    assert torch.equal(outputs[0], outputs[2]) and not torch.equal(outputs[0], outputs[1])
    blocks = trainer.model.get_encoder("audio").frontend.feature_encoder_blocks()
    before = [[p.clone() for p in block.parameters()] for block in blocks]
    trainer.train()
    changed = [
        any(not torch.equal(p, q) for p, q in zip(block.parameters(), old)) for block, old in zip(blocks, before)
    ]
    assert changed == [False, False, False, True, True]


@pytest.mark.slow
def test_encoders_learn_then_freeze_and_the_rest_trains_on_their_cached_features(converted, data, tmp_path):
    """`--freeze_encoders_after_epochs image=1 audio=2` over `--feature_encoder_trainable_blocks 2 --augment audio
    --augment_copies 2`: the image encoder learns in the first epoch and the stack's top blocks in the first two, then
    each freezes; the image features are computed over every split and the lower blocks' cached outputs are continued
    through the top blocks, so that the later epochs leave them as they were while the rest learns, and the cached
    features predict what the encoders computing from the inputs predict."""
    from test_training import tiny_arguments

    options = ["--modalities", "image", "audio", "--audio_model", str(converted), "--feature_encoder_trainable_blocks",
               "2", "--augment", "audio", "--augment_copies", "2", "--feature_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    arguments = tiny_arguments(
        data, tmp_path / "run", num_train_epochs=3, eval_strategy="no", save_strategy="no", audio_config=None
    )
    freezing = ["--freeze_encoders_after_epochs", "image=1", "audio=2"]
    trainer, splits = build_trainer(*parse_arguments([*arguments, *options, *freezing]))
    assert all(FEATURE_ROW_COLUMNS["image"] in split.column_names for split in (trainer.train_dataset, splits.test))
    assert "image" not in trainer.data_collator.encoder_features  # reserved rows, read once the encoder freezes
    model = trainer.model
    learning = {
        "image": model.get_encoder("image"),
        "top blocks": torch.nn.ModuleList(model.get_encoder("audio").frontend.feature_encoder_blocks()[3:]),
        "fusion": model.base_model.fusion,
    }
    weights = [{name: [p.detach().clone() for p in part.parameters()] for name, part in learning.items()}]
    epochs = []

    class Snapshot(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            weights.append({name: [p.detach().clone() for p in part.parameters()] for name, part in learning.items()})
            epochs.append(trainer.data_collator(trainer.train_dataset.select(range(4)).to_list()))

    trainer.add_callback(Snapshot())
    trainer.train()
    changed = [
        {name: any(not torch.equal(p, q) for p, q in zip(after[name], before[name])) for name in learning}
        for before, after in itertools.pairwise(weights)
    ]
    assert changed == [
        {"image": True, "top blocks": True, "fusion": True},
        {"image": False, "top blocks": True, "fusion": True},
        {"image": False, "top blocks": False, "fusion": True},
    ]
    assert "pixel_values" in epochs[0] and epochs[0]["audio_feature_encoder_outputs"].dim() == 4
    assert "pixel_values" not in epochs[1] and epochs[1]["audio_feature_encoder_outputs"].dim() == 4
    assert epochs[2]["audio_feature_encoder_outputs"].shape[2:] == (96,)
    plain, plain_splits = build_trainer(*parse_arguments([*arguments, *options[:-2], "--cache_frozen_features", "False"]))
    plain.model.load_state_dict(trainer.model.state_dict())
    cached, computed = evaluate_split(trainer, splits.test, ["image"]), evaluate_split(plain, plain_splits.test, ["image"])
    for variant, (metrics, predictions, _) in computed.items():
        assert cached[variant][0] == metrics and (cached[variant][1] == predictions).all()
    # a best checkpoint from before the image encoder froze: its cached features are dropped, the rest kept
    with torch.no_grad():
        model.get_encoder("image").embedder.embedder.convolution.weight.mul_(1.5)
    trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)  # the check passes
    assert "image" not in trainer.data_collator.encoder_features and "audio" in trainer.data_collator.encoder_features
    plain.model.load_state_dict(trainer.model.state_dict())
    cached, computed = evaluate_split(trainer, splits.test), evaluate_split(plain, plain_splits.test)
    assert cached["all"][0] == computed["all"][0] and (cached["all"][1] == computed["all"][1]).all()


@pytest.mark.slow
def test_without_the_cache_the_encoders_still_freeze_and_stay_in_eval_mode(converted, data, tmp_path):
    from test_training import tiny_arguments

    arguments = tiny_arguments(
        data, tmp_path / "run", num_train_epochs=2, eval_strategy="no", save_strategy="no", audio_config=None
    )
    options = ["--modalities", "image", "audio", "--audio_model", str(converted), "--feature_encoder_trainable_blocks",
               "2", "--freeze_encoders_after_epochs", "1", "--cache_frozen_features", "False"]  # fmt: skip
    trainer, _ = build_trainer(*parse_arguments([*arguments, *options]))
    image = trainer.model.get_encoder("image")
    after_first = {}

    class Snapshot(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            after_first.setdefault("weights", [p.detach().clone() for p in image.parameters()])
            after_first.setdefault("buffers", [b.clone() for b in image.buffers()])

    trainer.add_callback(Snapshot())
    trainer.train()
    assert trainer.data_collator.encoder_features == {}  # nothing cached: the encoders ran on the inputs
    assert all(torch.equal(p, q) for p, q in zip(image.parameters(), after_first["weights"]))
    assert all(torch.equal(b, c) for b, c in zip(image.buffers(), after_first["buffers"]))  # batch-norm statistics too
    assert "image" in trainer.frozen_modalities


@pytest.mark.slow
def test_a_run_resumed_past_the_freezing_epoch_freezes_again_and_ends_as_the_whole_run(converted, data, tmp_path):
    """Resumed from its checkpoint after the second of three epochs, a `--freeze_encoders_after_epochs 1` run freezes
    the encoders again at its first epoch (reading the image features its first part cached) and ends with the
    weights of the run that was not interrupted."""
    from test_training import tiny_arguments

    def run(folder: str, resume: str | None = None) -> dict[str, torch.Tensor]:
        arguments = tiny_arguments(
            data, tmp_path / folder, num_train_epochs=3, eval_strategy="no", save_strategy="epoch",
            audio_config=None, load_best_model_at_end=False,
        )  # fmt: skip
        options = ["--modalities", "image", "audio", "--audio_model", str(converted), "--feature_encoder_trainable_blocks",
                   "2", "--freeze_encoders_after_epochs", "1", "--feature_cache_dir", str(tmp_path / "cache")]  # fmt: skip
        trainer, _ = build_trainer(*parse_arguments([*arguments, *options]))
        trainer.train(resume_from_checkpoint=resume)
        return {name: value.clone() for name, value in trainer.model.state_dict().items()}

    whole = run("whole")
    states = {path: json.loads((path / "trainer_state.json").read_text()) for path in (tmp_path / "whole").glob("checkpoint-*")}
    second = next(path for path, state in states.items() if state["epoch"] == 2)
    resumed = run("whole", resume=str(second))
    assert all(torch.equal(value, resumed[name]) for name, value in whole.items())


def test_freezing_the_encoders_mid_run_is_refused_where_it_cannot_work(converted, data, tmp_path, monkeypatch):
    from test_training import tiny_arguments

    arguments = tiny_arguments(data, tmp_path / "run", num_train_epochs=2, audio_config=None)
    options = [*arguments, "--audio_model", str(converted)]
    assert parse_arguments([*options, "--freeze_encoders_after_epochs", "3"])[0].freeze_epochs() == 3
    pairs = parse_arguments([*options, "--freeze_encoders_after_epochs", "image=3", "audio=8"])[0]
    assert pairs.freeze_epochs() == {"image": 3, "audio": 8}
    for values in (["0"], ["two"], ["image=0"], ["sound=3"], ["image=3", "image=4"], ["3", "image=4"]):
        with pytest.raises(ValueError, match="pass N .every learning encoder. or modality=N pairs"):
            parse_arguments([*options, "--freeze_encoders_after_epochs", *values])
    with pytest.raises(ValueError, match="--freeze_encoders_after_epochs with --hpo_trials"):
        parse_arguments([*options, "--freeze_encoders_after_epochs", "1", "--hpo_trials", "2"])
    never = "--freeze_encoders_after_epochs image=1 audio=2 with --num_train_epochs 2.0: an encoder would never freeze"
    with pytest.raises(ValueError, match=never):
        build_trainer(*parse_arguments([*options, "--freeze_encoders_after_epochs", "image=1", "audio=2"]))
    with pytest.raises(ValueError, match=r"epochs names \['text'\], whose encoders do not learn in this run"):
        build_trainer(*parse_arguments([*options, "--freeze_modalities", "text", "--freeze_encoders_after_epochs",
                                        "text=1"]))  # fmt: skip
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="freezing the encoders mid-run needs one process, the run has 2"):
        build_trainer(*parse_arguments([*options, "--freeze_encoders_after_epochs", "1"]))


def test_feature_encoder_learning_rate_names_the_stack_that_learns(converted, tmp_path):
    argv = ["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "run"), "--audio_model", str(converted),
            "--audio_learning_rate", "3e-3", "--feature_encoder_learning_rate", "3e-4"]  # fmt: skip
    model_args, data_args, _ = parse_arguments(argv)
    assert model_args.learning_rates()[FEATURE_ENCODER_PART] == 3e-4
    assert FEATURE_ENCODER_PART not in parse_arguments(argv[:-2])[0].learning_rates()  # default: the audio rate
    model, _ = build_model_and_processor(model_args, data_args, ["a", "b"])
    assert encoder_part(model, FEATURE_ENCODER_PART) is model.get_encoder("audio").frontend.feature_encoder
    assert all(p.requires_grad for p in model.get_encoder("audio").parameters())


def test_a_file_that_is_not_the_speech_embedding_graph_is_refused(tmp_path):
    with pytest.raises(ValueError, match="holds 2 convolutions where speech_embedding has 20"):
        convert(tmp_path / "out", onnx_file=default_onnx_file().with_name("melspectrogram.onnx"))
    assert not (tmp_path / "out").exists()
