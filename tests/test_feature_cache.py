"""The frozen-encoder feature cache: cached features give the logits of the encoder itself (pooled heads and the
transformer head's token features), are read back instead of recomputed, are invalidated by another dataset, other
weights or other preprocessing, and are refused for trained encoders and skipped for inputs augmented afresh every
epoch (cached once per copy when augmented from fixed copies). The frozen feature encoder of a trained audio encoder,
or its frozen lower blocks, are cached the same way."""

from __future__ import annotations

import dataclasses
import io

import datasets
import pytest
import soundfile
import torch

from hf_multimodal.data_augmentation import INDEX_COLUMN, DataAugmentation
from hf_multimodal.data_collator import MultimodalDataCollator
from hf_multimodal.feature_cache import FEATURE_ROW_COLUMNS, FrozenEncoderCache, FrozenEncoderCheckCallback

from conftest import TINY_AUDIO, random_audio, random_image, tiny_model


@pytest.fixture(scope="module")
def examples() -> datasets.Dataset:
    """Six examples, each missing one modality somewhere (texts of different lengths: padding varies by batch)."""
    texts = ["a loud red bird", None, "seven", "the quick brown fox jumps over it", "two", "one more"]
    images, audio = [], []
    for index in range(6):
        png, wav = io.BytesIO(), io.BytesIO()
        random_image(index).save(png, format="PNG")
        soundfile.write(wav, random_audio(index, 0.3), 16000, format="WAV")
        images.append({"bytes": png.getvalue(), "path": None} if index != 2 else None)
        audio.append({"bytes": wav.getvalue(), "path": None} if index != 4 else None)
    # undecoded media, as scripts/train.py keeps Image() / Audio() columns: {"bytes", "path"} rows
    return datasets.Dataset.from_dict({"text": texts, "image": images, "audio": audio, "label": [0, 1, 2, 0, 1, 2]})


def frozen_model(fusion_type: str = "gated", seed: int = 0):
    model = tiny_model(fusion_type=fusion_type, seed=seed)
    model.get_encoder("text").requires_grad_(False)
    return model


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**{name: value for name, value in batch.items() if name != "labels"}).logits


def count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("fusion_type", ["gated", "transformer"])
def test_cached_features_give_the_logits_and_ablations_of_the_encoder(fusion_type, examples, processor, tmp_path):
    model = frozen_model(fusion_type)
    collator = MultimodalDataCollator(processor, model.config.modalities)
    # one example per encoder call: sequences of each length, and a call without text (example 1)
    cached = FrozenEncoderCache(model, collator, ["text"], cache_dir=tmp_path, batch_size=1).add(examples)
    plain = dataclasses.replace(collator, encoder_features={})
    for rows in ([0, 1, 2], [3, 4, 5], [5, 1]):  # other batches than those the cache was computed in
        batch = collator([cached[row] for row in rows])
        reference = plain([examples[row] for row in rows])
        assert "input_ids" not in batch and "input_ids" in reference
        assert batch["has_text"].tolist() == reference["has_text"].tolist()
        if fusion_type == "transformer":  # token features, cut to the batch's longest text as the tokenizer pads
            assert batch["text_encoder_features"].shape[:2] == reference["input_ids"].shape
        torch.testing.assert_close(logits(model, batch), logits(model, reference), atol=1e-5, rtol=1e-5)
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        ablated = model.ablation_logits(**inputs)
        expected = model.ablation_logits(**{name: value for name, value in reference.items() if name != "labels"})
        for variant, values in expected.items():
            torch.testing.assert_close(ablated[variant], values, atol=1e-5, rtol=1e-5, equal_nan=True)


def speech_embedding_model(fusion_type: str = "gated", seed: int = 0):
    """A tiny model whose audio encoder has the speech_embedding stack, frozen, the rest of it trained; text frozen."""
    model = tiny_model(audio_config={**TINY_AUDIO, "frontend": "speech_embedding"}, fusion_type=fusion_type, seed=seed)
    model.get_encoder("audio").freeze_feature_encoder()
    model.get_encoder("text").requires_grad_(False)
    return model


@pytest.mark.parametrize("fusion_type", ["gated", "transformer"])
def test_a_frozen_feature_encoder_is_cached_and_the_rest_of_its_encoder_trains_on_it(
    fusion_type, examples, processor, tmp_path
):
    model = speech_embedding_model(fusion_type)
    collator = MultimodalDataCollator(processor, model.config.modalities)
    cache = FrozenEncoderCache(
        model, collator, ["text"], cache_dir=tmp_path, batch_size=4, feature_encoder_modalities=["audio"]
    )
    cached = cache.add(examples)
    assert cache.parts == {"text": "encoder", "audio": "feature_encoder"}
    assert collator.encoder_features["audio"].part == "feature_encoder"
    plain = dataclasses.replace(collator, encoder_features={})
    stack_calls = count_calls(model.get_encoder("audio").frontend.feature_encoder[0])
    # other batches than those the cache was computed in; example 2 has only cached modalities (no image)
    for rows in ([0, 1, 2], [3, 4, 5], [5, 1], [2, 4]):
        batch = collator([cached[row] for row in rows])
        reference = plain([examples[row] for row in rows])
        assert "input_values" not in batch and batch["audio_feature_encoder_outputs"].shape[-1] == 96
        assert batch["has_image"].tolist() == reference["has_image"].tolist()
        assert batch["has_audio"].tolist() == reference["has_audio"].tolist()
        calls_before = len(stack_calls)
        torch.testing.assert_close(logits(model, batch), logits(model, reference), atol=1e-5, rtol=1e-5)
        assert len(stack_calls) == calls_before + 1  # only the reference ran the stack
        ablated = model.ablation_logits(**{name: value for name, value in batch.items() if name != "labels"})
        expected = model.ablation_logits(**{name: value for name, value in reference.items() if name != "labels"})
        for variant, values in expected.items():
            torch.testing.assert_close(ablated[variant], values, atol=1e-5, rtol=1e-5, equal_nan=True)
    model.train()  # the projection and the dilated stacks after the cached stack learn
    batch = collator([cached[row] for row in range(6)])
    model(**batch).loss.backward()
    audio = model.get_encoder("audio")
    assert audio.frontend.projection.weight.grad is not None and audio.layers[0].dilated_conv.weight.grad is not None


def test_the_frozen_lower_blocks_of_a_stack_whose_top_blocks_learn_are_cached(examples, processor, tmp_path):
    model = tiny_model(audio_config={**TINY_AUDIO, "frontend": "speech_embedding"})
    model.get_encoder("text").requires_grad_(False)
    audio = model.get_encoder("audio")
    audio.freeze_feature_encoder(trainable_top_blocks=2)
    collator = MultimodalDataCollator(processor, model.config.modalities)
    cache = FrozenEncoderCache(
        model, collator, [], cache_dir=tmp_path, batch_size=4, feature_encoder_modalities=["audio"]
    )
    cached = cache.add(examples)
    assert collator.encoder_features["audio"].features.shape[1:] == (72, 4)  # the third block's output, packed
    plain = dataclasses.replace(collator, encoder_features={})
    lowest, top = count_calls(audio.frontend.feature_encoder[0]), count_calls(audio.frontend.feature_encoder[-1])
    for rows in ([0, 1, 2], [3, 4, 5], [5, 1]):
        batch = collator([cached[row] for row in rows])
        reference = plain([examples[row] for row in rows])
        assert batch["audio_feature_encoder_outputs"].dim() == 4 and "input_values" not in batch
        torch.testing.assert_close(logits(model, batch), logits(model, reference), atol=1e-5, rtol=1e-5)
    assert len(lowest) == 3 and len(top) == 6  # the lower blocks ran for the references only
    model.train()
    model(**collator([cached[row] for row in range(6)])).loss.backward()
    stack = list(audio.frontend.feature_encoder.parameters())
    assert [p.grad is not None for p in stack] == [False] * 22 + [True] * 18  # the top 2 blocks learn, 3 below not


def test_encoders_frozen_later_get_their_rows_first_and_their_tables_once_frozen(examples, processor, tmp_path):
    """A cache with `later` parts (`FreezeEncodersCallback`): the image encoder and the stack's top blocks learn, so
    the splits get image rows that point nowhere yet (the collator decodes the images) and the lower blocks' outputs;
    once they are frozen, `compute_later` computes the image table (a split without images gets absent rows) and
    continues the lower blocks through the top ones, and the batches give the logits of the encoders themselves."""
    model = tiny_model(audio_config={**TINY_AUDIO, "frontend": "speech_embedding"})
    model.get_encoder("text").requires_grad_(False)
    audio = model.get_encoder("audio")
    audio.freeze_feature_encoder(trainable_top_blocks=2)
    collator = MultimodalDataCollator(processor, model.config.modalities)
    later = {"image": "encoder", "audio": "feature_encoder"}
    with pytest.raises(ValueError, match="text cannot freeze its feature_encoder later"):
        FrozenEncoderCache(model, collator, ["text"], cache_dir=tmp_path, later={"text": "feature_encoder"})
    cache = FrozenEncoderCache(
        model, collator, ["text"], cache_dir=tmp_path, batch_size=4, feature_encoder_modalities=["audio"], later=later
    )
    splits = [cache.add(examples), cache.add(examples.select([2]))]  # the second split has no image
    assert splits[0][FEATURE_ROW_COLUMNS["image"]] == list(range(6)) and splits[1][FEATURE_ROW_COLUMNS["image"]] == [6]
    assert "image" not in collator.encoder_features and "pixel_values" in collator([splits[0][0]])
    with pytest.raises(ValueError, match="the encoder of image still learns; freeze it first"):
        cache.compute_later()
    model.get_encoder("image").requires_grad_(False)
    audio.freeze_feature_encoder()
    cache.compute_later()
    assert cache.parts == {"text": "encoder", "audio": "feature_encoder", "image": "encoder"}
    assert collator.encoder_features["image"].present.tolist() == [True, True, False, True, True, True, False]
    assert collator.encoder_features["audio"].features.shape[1:] == (96,)  # the whole stack's output, packed
    plain = dataclasses.replace(collator, encoder_features={})
    model.eval()
    for rows in ([0, 1, 2], [3, 4, 5], [5, 1]):
        batch = collator([splits[0][row] for row in rows])
        assert "pixel_values" not in batch and batch["audio_feature_encoder_outputs"].dim() == 3
        reference = plain([examples[row] for row in rows])
        torch.testing.assert_close(logits(model, batch), logits(model, reference), atol=1e-5, rtol=1e-5)
    assert collator([splits[1][0]])["has_image"].tolist() == [False]


def test_an_encoder_frozen_later_over_augmented_copies_gets_a_row_per_copy_after_the_splits_before(
    examples, processor, tmp_path
):
    """Rows reserved for an image encoder frozen later, over a split without augmentation and then a training split
    augmented from 2 copies: each copy's rows follow the rows reserved before, and once computed each epoch reads its
    copy as the encoder computes it."""
    model = tiny_model()
    model.get_encoder("text").requires_grad_(False)
    augmentation = DataAugmentation(["image"], seed=0, copies=2)
    collator = MultimodalDataCollator(processor, model.config.modalities, augmentation=augmentation)
    cache = FrozenEncoderCache(model, collator, ["text"], cache_dir=tmp_path, later={"image": "encoder"})
    validation = cache.add(examples)
    train = cache.add(examples.add_column(INDEX_COLUMN, list(range(6))))
    assert validation[FEATURE_ROW_COLUMNS["image"]] == list(range(6))
    assert train[FEATURE_ROW_COLUMNS["image"]] == [[6 + row, 12 + row] for row in range(6)]
    model.get_encoder("image").requires_grad_(False)
    cache.compute_later()
    assert len(collator.encoder_features["image"]) == 18
    plain = dataclasses.replace(collator, encoder_features={})
    model.eval()
    features = []
    for epoch in (0, 1):
        augmentation.epoch = epoch
        batch = collator([train[row] for row in range(6)])
        assert "pixel_values" not in batch
        reference = plain([examples.add_column(INDEX_COLUMN, list(range(6)))[row] for row in range(6)])
        torch.testing.assert_close(logits(model, batch), logits(model, reference), atol=1e-5, rtol=1e-5)
        features.append(batch["image_encoder_features"])
    assert not torch.equal(features[0], features[1])  # the two copies differ


def test_augmented_inputs_drawn_from_fixed_copies_are_cached_once_per_copy(examples, processor, tmp_path):
    """The training split of a run augmenting audio from 2 copies: a table per copy, a row per copy in its row
    column, and each epoch's batches read the copy it draws, as the lower blocks would compute it."""
    model = tiny_model(audio_config={**TINY_AUDIO, "frontend": "speech_embedding"})
    model.get_encoder("text").requires_grad_(False)
    model.get_encoder("audio").freeze_feature_encoder(trainable_top_blocks=2)
    augmentation = DataAugmentation(["audio"], seed=0, copies=2)
    collator = MultimodalDataCollator(processor, model.config.modalities, augmentation=augmentation)
    cache = FrozenEncoderCache(model, collator, [], cache_dir=tmp_path, feature_encoder_modalities=["audio"])
    train = examples.add_column(INDEX_COLUMN, list(range(6)))
    assert cache.key(train, "audio", 0) != cache.key(train, "audio", 1) != cache.key(train, "audio")
    cached = cache.add(train)
    assert len(cache.computed) == 2
    assert cached[FEATURE_ROW_COLUMNS["audio"]] == [[row, row + 6] for row in range(6)]
    plain = dataclasses.replace(collator, encoder_features={})  # the same augmentation object, epoch and all
    epochs = []
    for epoch in range(3):
        augmentation.epoch = epoch
        batch = collator([cached[row] for row in range(6)])
        torch.testing.assert_close(logits(model, batch), logits(model, plain([train[row] for row in range(6)])))
        epochs.append(batch["audio_feature_encoder_outputs"])
    assert torch.equal(epochs[0], epochs[2]) and not torch.equal(epochs[0], epochs[1])
    again = FrozenEncoderCache(model, dataclasses.replace(collator, encoder_features={}), [], cache_dir=tmp_path,
                               feature_encoder_modalities=["audio"])
    again.add(train)
    assert again.computed == [] and len(again.read) == 2
    other = dataclasses.replace(collator, augmentation=DataAugmentation(["audio"], seed=0, copies=3))
    with pytest.raises(ValueError, match="list 2 augmentation copies but the collator's augmentation has copies=3"):
        other([cached[0]])


def test_a_feature_encoder_cache_is_refused_while_the_stack_trains_and_checked_against_its_weights(
    examples, processor, tmp_path
):
    model = tiny_model(audio_config={**TINY_AUDIO, "frontend": "speech_embedding"})
    collator = MultimodalDataCollator(processor, model.config.modalities)
    with pytest.raises(ValueError, match="feature_encoder of audio is trained.*--freeze_feature_encoder"):
        FrozenEncoderCache(model, collator, [], cache_dir=tmp_path, feature_encoder_modalities=["audio"])
    with pytest.raises(ValueError, match="cannot cache the feature_encoder of the audio encoder"):  # no stack
        FrozenEncoderCache(tiny_model(), collator, [], cache_dir=tmp_path, feature_encoder_modalities=["audio"])
    model.get_encoder("audio").freeze_feature_encoder()
    cache = FrozenEncoderCache(model, collator, [], cache_dir=tmp_path, feature_encoder_modalities=["audio"])
    with torch.no_grad():  # the rest of the encoder trains: the check reads the stack only
        model.get_encoder("audio").frontend.projection.weight.add_(1.0)
    FrozenEncoderCheckCallback(cache).on_train_begin(None, None, None, model=model)
    with pytest.raises(ValueError, match="frozen feature_encoder of audio: its weights differ"):
        FrozenEncoderCheckCallback(cache).on_train_begin(None, None, None, model=speech_embedding_model(seed=1))


def test_a_pooled_cache_is_refused_by_a_head_over_sequences(examples, processor, tmp_path):
    pooled = frozen_model("gated")
    collator = MultimodalDataCollator(processor, pooled.config.modalities)
    batch = collator([FrozenEncoderCache(pooled, collator, ["text"], cache_dir=tmp_path).add(examples)[0]])
    with pytest.raises(ValueError, match="sequences=True"):
        logits(frozen_model("transformer"), batch)


def test_features_are_read_back_not_recomputed(examples, processor, tmp_path):
    model = frozen_model()
    collator = MultimodalDataCollator(processor, model.config.modalities)
    calls = count_calls(model.get_encoder("text"))
    first = FrozenEncoderCache(model, collator, ["text"], cache_dir=tmp_path)
    first.add(examples)
    assert len(first.computed) == 1 and calls
    calls.clear()
    again = dataclasses.replace(collator, encoder_features={})  # a resumed run or another process
    second = FrozenEncoderCache(model, again, ["text"], cache_dir=tmp_path)
    cached = second.add(examples)
    assert second.computed == [] and not calls
    torch.testing.assert_close(again.encoder_features["text"].features, collator.encoder_features["text"].features)
    logits(model, again([cached[row] for row in range(6)]))  # training and evaluation batches skip the encoder too
    assert not calls


def test_the_key_changes_with_the_data_the_weights_and_the_preprocessing(examples, processor, tmp_path):
    model = frozen_model()
    collator = MultimodalDataCollator(processor, model.config.modalities)

    def cache(collator: MultimodalDataCollator = collator) -> FrozenEncoderCache:
        return FrozenEncoderCache(model, collator, ["text"], cache_dir=tmp_path)

    key = cache().key(examples, "text")
    assert cache().key(examples, "text") == key
    assert cache().key(examples.select(range(5)), "text") != key  # another dataset fingerprint
    shorter = type(processor)(processor.tokenizer, processor.image_processor, processor.feature_extractor, 8)
    assert cache(dataclasses.replace(collator, processor=shorter)).key(examples, "text") != key  # max_text_length
    with torch.no_grad():
        model.get_encoder("text").embeddings.word_embeddings.weight[5, 0] += 1.0
    changed = cache()
    assert changed.key(examples, "text") != key
    with pytest.raises(ValueError, match="weights differ"):  # a resumed checkpoint that is another model
        FrozenEncoderCheckCallback(changed).on_train_begin(None, None, None, model=frozen_model())


def test_a_trained_encoder_is_refused_and_augmented_inputs_are_not_cached(examples, processor, tmp_path):
    model = tiny_model()
    collator = MultimodalDataCollator(processor, model.config.modalities)
    with pytest.raises(ValueError, match="--freeze_modalities text"):
        FrozenEncoderCache(model, collator, ["text"], cache_dir=tmp_path)
    model.get_encoder("text").requires_grad_(False)
    augmented = dataclasses.replace(collator, augmentation=DataAugmentation(["text"], seed=0))
    cache = FrozenEncoderCache(model, augmented, ["text"], cache_dir=tmp_path)
    train = cache.add(examples.add_column(INDEX_COLUMN, list(range(6))))  # the training split: augmented
    validation = cache.add(examples)  # evaluation splits are never augmented: cached
    assert FEATURE_ROW_COLUMNS["text"] not in train.column_names
    assert FEATURE_ROW_COLUMNS["text"] in validation.column_names
    assert "input_ids" in augmented([train[0], train[1]])
    assert "text_encoder_features" in augmented([validation[0], validation[1]])


def test_a_filtered_split_read_from_disk_gets_its_rows_without_writing_beside_its_data(examples, processor, tmp_path):
    examples.save_to_disk(tmp_path / "data")
    saved = set((tmp_path / "data").iterdir())
    split = datasets.load_from_disk(tmp_path / "data").filter(lambda row: row["label"] > 0, keep_in_memory=True)
    model = frozen_model()
    collator = MultimodalDataCollator(processor, model.config.modalities)
    cached = FrozenEncoderCache(model, collator, ["text"], cache_dir=tmp_path / "features").add(split)
    assert cached[FEATURE_ROW_COLUMNS["text"]] == [0, 1, 2, 3] and cached["label"] == [1, 2, 1, 2]
    assert set((tmp_path / "data").iterdir()) == saved  # read-only data stays untouched


@pytest.mark.slow
def test_training_script_trains_and_evaluates_from_the_cache_as_from_the_encoder(data, tmp_path):
    from train import build_trainer, evaluate_split, parse_arguments

    from test_training import tiny_arguments

    def trainer_for(*options: str):
        arguments = tiny_arguments(data, tmp_path / "run", max_steps=3, eval_strategy="no", save_strategy="no")
        return build_trainer(*parse_arguments([*arguments, "--freeze_modalities", "text", *options]))

    features = tmp_path / "features"
    cached, splits = trainer_for("--feature_cache_dir", str(features))
    plain, plain_splits = trainer_for("--cache_frozen_features", "False")
    stored = {path.name: path.stat().st_mtime_ns for path in features.iterdir()}
    assert len(stored) == 3  # train, validation and test
    batch = next(iter(cached.get_train_dataloader()))
    assert "text_encoder_features" in batch and "input_ids" not in batch
    drop = ("text", "image", "audio")
    with_cache, without = evaluate_split(cached, splits.test, drop), evaluate_split(plain, plain_splits.test, drop)
    for variant, (metrics, predictions, _) in without.items():  # test metrics and every ablation
        assert with_cache[variant][0] == metrics and (with_cache[variant][1] == predictions).all()

    text_before = {name: p.clone() for name, p in cached.model.get_encoder("text").state_dict().items()}
    cached.train()  # the weight check runs at its start and end
    assert all(torch.equal(p, text_before[name]) for name, p in cached.model.get_encoder("text").state_dict().items())
    again, _ = trainer_for("--feature_cache_dir", str(features))  # a resumed run, or the other processes: read back
    assert {path.name: path.stat().st_mtime_ns for path in features.iterdir()} == stored
    assert FEATURE_ROW_COLUMNS["text"] in again.train_dataset.column_names
