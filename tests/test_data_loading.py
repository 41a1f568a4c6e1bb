"""Decoding in DataLoader workers: the Trainer's training loader gives the same batches, in the same order, with 0
and with 2 worker processes (images and 8 kHz audio decoded and resampled in the workers, augmentation of the
current epoch included), the workers run one torch thread each, and the collator survives pickling (spawned
workers). Length-grouped batches: `--train_sampling_strategy group_by_length` measures the examples of every split
(their audio from the files' headers, else their text tokens) for transformers' samplers."""

from __future__ import annotations

import pickle

import datasets
import numpy as np
import pytest
import torch
from conftest import random_audio, random_image, tiny_model
from fuzz_strategies import _png_bytes, _wav_bytes
from test_training import tiny_arguments
from train import Splits, build_trainer, parse_arguments
from transformers import set_seed

from hf_multimodal import MODALITIES
from hf_multimodal.data_augmentation import INDEX_COLUMN, DataAugmentation
from hf_multimodal.data_collator import MultimodalDataCollator
from hf_multimodal.media_loading import audio_duration
from hf_multimodal.trainer import MultimodalTrainer, SamplerLengthsCallback
from hf_multimodal.training_args import MultimodalTrainingArguments

NUM_ROWS, BATCH_SIZE = 24, 8


@pytest.fixture(scope="module")
def raw_rows() -> datasets.Dataset:
    """Rows as `scripts/make_demo_dataset.py` stores them: text, PNG and 8 kHz WAV bytes (undecoded), some missing."""
    rows = [
        {
            "text": None if index % 5 == 1 else f"the digit {index % 3} spoken",
            "image": None if index % 4 == 2 else {"bytes": _png_bytes(random_image(index)), "path": None},
            "audio": {"bytes": _wav_bytes(random_audio(index, 0.3, 8000), 8000), "path": None},
            "label": index % 3,
            INDEX_COLUMN: index,
        }
        for index in range(NUM_ROWS)
    ]
    return datasets.Dataset.from_list(rows)


def loader_batches(
    collator: MultimodalDataCollator, train: datasets.Dataset, workers: int, tmp_path
) -> list[dict[str, torch.Tensor]]:
    """Every batch of one pass over `MultimodalTrainer.get_train_dataloader()` (shuffled, seed 0)."""
    args = MultimodalTrainingArguments(
        str(tmp_path / f"workers_{workers}"),
        per_device_train_batch_size=BATCH_SIZE,
        dataloader_num_workers=workers,
        eval_strategy="no",
        load_best_model_at_end=False,
        early_stopping_patience=0,
        report_to="none",
        use_cpu=True,
    )
    trainer = MultimodalTrainer(model=tiny_model(), args=args, train_dataset=train, data_collator=collator)
    set_seed(0)
    return list(trainer.get_train_dataloader())


def assert_same_batches(
    left: list[dict[str, torch.Tensor]], right: list[dict[str, torch.Tensor]], count: int = NUM_ROWS // BATCH_SIZE
) -> None:
    assert len(left) == len(right) == count
    for one, other in zip(left, right):
        assert one.keys() == other.keys()
        for name in one:
            assert torch.equal(one[name], other[name]), name


def test_workers_give_the_batches_of_the_main_process_in_the_same_order(processor, raw_rows, tmp_path):
    collator = MultimodalDataCollator(processor, MODALITIES, max_audio_seconds=0.25)
    in_process = loader_batches(collator, raw_rows, 0, tmp_path)
    in_workers = loader_batches(collator, raw_rows, 2, tmp_path)
    assert_same_batches(in_process, in_workers)
    assert in_process[0]["input_values"].shape[-1] == 4000  # 0.25 s decoded at 8 kHz, resampled to 16 kHz
    labels = torch.cat([batch["labels"] for batch in in_process])
    assert sorted(labels.tolist()) == sorted(raw_rows["label"]) and labels.tolist() != raw_rows["label"]  # shuffled


def test_workers_augment_with_the_epoch_set_before_the_loader_starts(processor, raw_rows, tmp_path):
    """Workers (not persistent) copy the collator when each epoch's iterator starts, so they draw that epoch's
    augmentation, as the main process does; `AugmentationEpochCallback` sets the epoch before that point."""
    augmentation = DataAugmentation(MODALITIES, seed=3)
    collator = MultimodalDataCollator(processor, MODALITIES, augmentation=augmentation)
    epoch_0 = loader_batches(collator, raw_rows, 0, tmp_path)
    augmentation.epoch = 1
    in_workers = loader_batches(collator, raw_rows, 2, tmp_path)
    assert_same_batches(loader_batches(collator, raw_rows, 0, tmp_path), in_workers)
    assert not torch.equal(epoch_0[0]["pixel_values"], in_workers[0]["pixel_values"])  # epoch 1's draws, not 0's


class ThreadsCollator(MultimodalDataCollator):
    """A collator that records the torch threads of the process that runs it."""

    def __call__(self, examples):
        return {**super().__call__(examples), "threads": torch.tensor([torch.get_num_threads()] * len(examples))}


def test_workers_run_one_torch_thread_each(processor, raw_rows, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a main process using both cores of a 2-core machine
    try:
        batches = loader_batches(ThreadsCollator(processor, MODALITIES), raw_rows, 2, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert {int(value) for batch in batches for value in batch["threads"]} == {1}


def test_collator_survives_pickling_as_spawned_workers_receive_it(processor, raw_rows):
    """Workers started by "spawn" or "forkserver" (macOS, Python >= 3.14 on Linux) get the collator pickled."""
    collator = MultimodalDataCollator(processor, MODALITIES, augmentation=DataAugmentation(MODALITIES, seed=3, epoch=2))
    copy = pickle.loads(pickle.dumps(collator))
    rows = [raw_rows[index] for index in range(BATCH_SIZE)]
    assert_same_batches([collator(rows)], [copy(rows)], count=1)


def _grouped_trainer(data, tmp_path, *options: str) -> tuple[MultimodalTrainer, Splits]:
    arguments = tiny_arguments(data, tmp_path / "run", train_sampling_strategy="group_by_length")
    return build_trainer(*parse_arguments([*arguments, *options]))


def test_group_by_length_batches_clips_of_similar_lengths(data, tmp_path):
    trainer, splits = _grouped_trainer(data, tmp_path, "--modalities", "text", "audio", "--max_audio_seconds", "0.5")
    rate = trainer.processing_class.feature_extractor.sampling_rate

    def lengths(split: datasets.Dataset) -> list[int]:
        return [0 if clip is None else int(min(audio_duration(clip), 0.5) * rate) for clip in split["audio"]]

    expected = lengths(trainer.train_dataset)
    assert trainer.train_dataset["length"] == expected and len(set(expected)) > 10  # clips under and over the cap
    sampler = trainer._get_train_sampler()
    assert type(sampler).__name__ == "LengthGroupedSampler" and sampler.lengths == expected

    def spread(order: list[int]) -> float:  # mean of (longest - shortest) over batches of 8
        batches = [[expected[i] for i in order[start : start + 8]] for start in range(0, len(order), 8)]
        return float(np.mean([max(batch) - min(batch) for batch in batches]))

    # the sampler sorts "megabatches" (of 24 examples here, of 576 in a demo-sized run) and cuts them into batches
    shuffled = torch.randperm(len(expected), generator=torch.Generator().manual_seed(0)).tolist()
    assert spread(list(sampler)) < 0.5 * spread(shuffled)
    first = next(iter(trainer.get_train_dataloader()))  # transformers' sampler puts the longest batch first
    assert first["input_values"].shape[-1] >= max(expected)
    # evaluation is grouped too (transformers' way), so every split the trainer batches is measured
    for split in (trainer.eval_dataset, splits.test):
        assert list(split["length"]) == lengths(split)
    assert 0 <= trainer.evaluate()["eval_accuracy"] <= 1  # transformers would fail to measure them itself

    text_only, _ = _grouped_trainer(data, tmp_path, "--modalities", "text")
    tokens = trainer.processing_class.tokenizer(list(text_only.train_dataset["text"]), truncation=True, max_length=16)
    assert text_only.train_dataset["length"] == [len(ids) for ids in tokens.input_ids]


def test_the_length_grouped_sampler_gets_its_lengths_as_a_list_when_training_begins(data, tmp_path):
    """transformers hands the sampler the lazy `datasets` column of lengths, read row by row every epoch:
    `SamplerLengthsCallback` (every `MultimodalTrainer` has it) reads it once into a list, with the same order."""
    trainer, _ = _grouped_trainer(data, tmp_path, "--modalities", "text", "audio")
    assert any(isinstance(callback, SamplerLengthsCallback) for callback in trainer.callback_handler.callbacks)
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler.sampler
    assert isinstance(sampler.lengths, datasets.arrow_dataset.Column)
    torch.manual_seed(0)
    before = list(sampler)
    SamplerLengthsCallback().on_train_begin(trainer.args, None, None, train_dataloader=loader)
    assert isinstance(sampler.lengths, list) and sampler.lengths == list(trainer.train_dataset["length"])
    torch.manual_seed(0)
    assert list(sampler) == before


def test_group_by_length_refuses_a_run_of_images_and_keeps_a_given_length_column(data, tmp_path):
    with pytest.raises(ValueError, match="images have one size: use it in a run that reads text or audio, or give"):
        _grouped_trainer(data, tmp_path, "--modalities", "image")
    given = datasets.load_from_disk(data)
    for name, split in given.items():
        given[name] = split.add_column("size", list(range(len(split))))
    given.save_to_disk(tmp_path / "given")
    options = ("--modalities", "image", "--length_column_name", "size")
    trainer, _ = _grouped_trainer(tmp_path / "given", tmp_path, *options)
    lengths = trainer._get_train_sampler().lengths  # the given column's, of the examples that have an image
    assert lengths == list(trainer.train_dataset["size"]) and lengths == sorted(set(lengths)) and len(lengths) > 100
