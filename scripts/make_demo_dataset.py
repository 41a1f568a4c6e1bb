#!/usr/bin/env python
"""Build the demo datasets (README: "Demo datasets") from the vendored recordings and scikit-learn's digits.

    python scripts/make_demo_dataset.py --output_dir outputs/demo/data                       # classify digits
    python scripts/make_demo_dataset.py --task match --output_dir outputs/match/data         # does the image match the recording?
    python scripts/make_demo_dataset.py --task match --match text image --output_dir ...     # does the note match the image?
    python scripts/make_demo_dataset.py --task pairs --output_dir outputs/pairs/data         # paired digits (alignment)
    python scripts/make_demo_dataset.py --task digits_present --output_dir ...               # which digits? (multi-label)
    python scripts/make_demo_dataset.py --task digit_value --output_dir ...                  # the digit's value (regression)
    python scripts/make_demo_dataset.py --synthetic_voices 1500 --output_dir ...             # + synthetic training voices

Every example is built from digits (0-9) given up to three ways, all from real material that ships offline:

- **text**: words someone wrote about it ("looks like a seven", "either 4 or nine", "the ink is smudged");
- **image**: a real handwritten digit (scikit-learn's `load_digits`, 8x8 scans) drawn at 32x32 with jitter;
- **audio**: a real person saying the digit (Free Spoken Digit Dataset, five speakers, 8 kHz), at a random speed;
  with `--synthetic_voices N`, N synthetic recordings (eSpeak NG, `speech_synthesis.py`) join the training pool only.

Five tasks:

- `classify` (the main demo): the label is the digit. Each modality of each example is independently *clean*,
  *ambiguous* (partial information: two or three candidate digits in the text, half the image occluded, a second
  speaker saying another digit over the first), *corrupted* (no digit in the text, the image buried in noise, the
  speech buried in noise at -15 to -9 dB SNR) or *missing*. No single modality is readable for much more than half of
  the examples, while the examples are drawn so that at least one modality carries information and at most one is
  missing: a model that fuses the three can be right far more often than any one-modality model.
- `match` (relational): two modalities (by default a scan and a recording) each show a digit, and the label says
  whether the digits agree ("same" / "different", exactly half and half). Each modality alone is at chance by
  construction: only the relation between them is informative. With `--match audio image` a note that carries no
  digit ("from the archive") accompanies half of the examples; with `--match text image` the note names a digit.
- `pairs`: unlabelled paired examples for contrastive alignment (text, scan and recording of the same digit); the
  `label` column (the digit) is only used to score retrieval and zero-shot classification.
- `digits_present` (multi-label): a clean scan and a clean recording each show a digit (the same one in about one
  example of ten); `label` is the set of digits present, one or two of "zero" ... "nine".
- `digit_value` (regression): a clean scan and a clean recording of the same digit; `label` is its value as a float.

Splits are by source: no scan or recording is shared between splits, and one speaker (`--held_out_speaker`) is
left out of training and validation entirely. `test` holds unseen recordings of the four training speakers and
unseen scans; `test_unseen_speaker` holds the held-out speaker's recordings with unseen scans, so results say how the
model does on a voice it never heard.

Example:

```python
>>> from make_demo_dataset import build_demo_dataset
>>> dataset = build_demo_dataset("scripts/demo_assets/fsdd", num_train=20, num_validation=10, num_test=10)
>>> list(dataset), dataset["train"].column_names
(['train', 'validation', 'test', 'test_unseen_speaker'], ['text', 'image', 'audio', 'label', 'text_state', 'image_state', 'audio_state', 'speaker'])
```
"""

from __future__ import annotations

import argparse
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import datasets
import numpy as np
import soundfile
from PIL import Image

from hf_multimodal import resample_audio
from speech_synthesis import DIGIT_WORDS, SYNTHETIC_SPEAKER, synthesize_spoken_digits


SPLITS: tuple[str, ...] = ("train", "validation", "test", "test_unseen_speaker")
TASKS: tuple[str, ...] = ("classify", "match", "pairs", "digits_present", "digit_value")
MATCH_LABELS: tuple[str, ...] = ("different", "same")
VENDORED_AUDIO_DIR = Path(__file__).resolve().parent / "demo_assets" / "fsdd"
HELD_OUT_SPEAKER = "jackson"
"""The FSDD speaker left out of training and validation (the `test_unseen_speaker` split)."""
AUDIO_SAMPLING_RATE = 8000
IMAGE_SIZE = 32

STATE_PROBABILITIES: dict[str, dict[str, float]] = {
    "text": {"clean": 0.25, "ambiguous": 0.40, "uninformative": 0.20, "missing": 0.15},
    "image": {"clean": 0.30, "occluded": 0.30, "noisy": 0.25, "missing": 0.15},
    "audio": {"clean": 0.50, "overlapped": 0.25, "noisy": 0.10, "missing": 0.15},
}
"""Probability of each state per modality, before the draw is redone for examples with more than one modality missing
or with no modality carrying information (see `INFORMATIVE_STATES`)."""

INFORMATIVE_STATES = frozenset({"clean", "ambiguous", "occluded", "overlapped"})

AUDIO_SPLIT_INDICES: dict[str, range] = {"test": range(0, 4), "validation": range(4, 6), "train": range(6, 50)}
"""FSDD recording indices per split of the training speakers (FSDD's own convention keeps indices 0-4 for testing);
every recording of the held-out speaker goes to `test_unseen_speaker`."""

IMAGE_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.6, "validation": 0.15, "test": 0.25}
"""Share of the scans per split; both test splits draw from the `test` scans."""

NEUTRAL_NOTES = (
    "from the archive",
    "pair recorded in the lab",
    "card and recording",
    "second session",
    "checked by the assistant",
    "batch of the morning",
)
"""Notes that carry no digit, beside half of the examples of the `match` task (audio and image)."""

CLEAN_TEMPLATES = (
    "{d}",
    "the number {d}",
    "it's a {d}",
    "looks like a {d} to me",
    "a {adj} {d}",
    "written on the card: {d}",
    "I think this is a {d}",
    "definitely {d}, {filler}",
)
AMBIGUOUS_TEMPLATES_2 = ("either {a} or {b}", "{a} or {b}, I can't tell", "maybe {a}, maybe {b}", "{a}? or was it {b}")
AMBIGUOUS_TEMPLATES_3 = ("could be {a}, {b} or {c}", "any of {a}, {b} and {c}", "{a}, {b} or {c}, {filler}")
UNINFORMATIVE_TEXTS = (
    "hard to tell",
    "no idea",
    "the ink is smudged",
    "can't read it",
    "some digit on a card",
    "written in a hurry",
    "illegible, sorry",
    "a number, I think",
    "the light was bad",
    "not sure at all",
)
ADJECTIVES = ("neat", "shaky", "small", "bold", "slanted", "faint", "hurried", "careful")
FILLERS = ("written in pencil", "on a blue card", "at the top of the page", "in the corner", "I'm fairly sure")

_FILE_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.(wav|flac)$")
_SPLIT_IDS = {name: index for index, name in enumerate(SPLITS)}


def load_spoken_digits(
    audio_dir: str | os.PathLike, held_out_speaker: str = HELD_OUT_SPEAKER, synthetic_voices: int = 0, seed: int = 0
) -> dict[str, dict[int, list[tuple[str, np.ndarray]]]]:
    """Read FSDD recordings (`{digit}_{speaker}_{index}.wav|flac`, 8 kHz mono) from `audio_dir`, grouped by split and
    digit, in file-name order: `{split: {digit: [(speaker, waveform)]}}`. The recordings of `held_out_speaker` all go
    to `test_unseen_speaker`; the others are split by index (see `AUDIO_SPLIT_INDICES`). `synthetic_voices`
    recordings synthesised with `seed` (`speech_synthesis.synthesize_spoken_digits`, speaker `"espeak-ng"`) are added
    to the `train` pool only."""
    folder = Path(audio_dir)
    if not folder.is_dir():
        raise ValueError(
            f"audio_dir {str(folder)!r} is not a folder: pass the folder of FSDD recordings "
            "(scripts/demo_assets/fsdd in this repository)."
        )
    pools: dict[str, dict[int, list]] = {split: {digit: [] for digit in range(10)} for split in SPLITS}
    speakers = set()
    for path in sorted(folder.iterdir()):
        match = _FILE_NAME.match(path.name)
        if match is None:
            continue
        digit, speaker, index = int(match.group(1)), match.group(2), int(match.group(3))
        speakers.add(speaker)
        if speaker == held_out_speaker:
            split = "test_unseen_speaker"
        else:
            split = next(name for name, indices in AUDIO_SPLIT_INDICES.items() if index in indices)
        waveform, rate = soundfile.read(path, dtype="float32")
        if rate != AUDIO_SAMPLING_RATE or waveform.ndim != 1:
            raise ValueError(f"{path} is not 8 kHz mono audio ({rate} Hz, shape {waveform.shape}): use FSDD recordings.")
        pools[split][digit].append((speaker, waveform))
    if not speakers:
        raise ValueError(
            f"{folder} holds no FSDD recordings: it must hold files named {{digit}}_{{speaker}}_{{index}}.wav or .flac "
            "(scripts/demo_assets/fsdd in this repository)."
        )
    if held_out_speaker not in speakers:
        raise ValueError(
            f"held_out_speaker {held_out_speaker!r} has no recording in {folder}: choose one of {sorted(speakers)}."
        )
    for split, by_digit in pools.items():
        empty = [digit for digit, clips in by_digit.items() if not clips]
        if empty:
            raise ValueError(
                f"{folder} has no {split} recordings of digits {empty}: it must hold FSDD files named "
                "{digit}_{speaker}_{index}.wav or .flac for every digit, with indices 0-5 and 6 or more for the "
                "training speakers."
            )
    if synthetic_voices:
        for digit, clips in synthesize_spoken_digits(synthetic_voices, seed, AUDIO_SAMPLING_RATE).items():
            pools["train"][digit].extend(clips)
    return pools


def load_handwritten_digits(seed: int = 0) -> dict[str, dict[int, list[np.ndarray]]]:
    """scikit-learn's handwritten digits (8x8, values 0-16), split without overlap by `IMAGE_SPLIT_FRACTIONS`:
    `{split: {digit: [image]}}` (both test splits share the test scans)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    bounds = np.cumsum([int(round(IMAGE_SPLIT_FRACTIONS[split] * len(order))) for split in SPLITS[:-1]])
    pools = {}
    for split, indices in zip(SPLITS, np.split(order, bounds)):
        pools[split] = {digit: [digits.images[i] for i in sorted(indices) if digits.target[i] == digit] for digit in range(10)}
    pools["test_unseen_speaker"] = pools["test"]
    return pools


def _load_pools(
    audio_dir: str | os.PathLike, held_out_speaker: str, synthetic_voices: int, seed: int
) -> tuple[dict[str, dict[int, list[tuple[str, np.ndarray]]]], dict[str, dict[int, list[np.ndarray]]]]:
    """The recordings (`load_spoken_digits`) and scans (`load_handwritten_digits`) every task draws from."""
    return load_spoken_digits(audio_dir, held_out_speaker, synthetic_voices, seed), load_handwritten_digits(seed)


def build_demo_dataset(
    audio_dir: str | os.PathLike,
    num_train: int = 2400,
    num_validation: int = 400,
    num_test: int = 800,
    seed: int = 0,
    probabilities: Mapping[str, Mapping[str, float]] | None = None,
    held_out_speaker: str = HELD_OUT_SPEAKER,
    synthetic_voices: int = 0,
) -> datasets.DatasetDict:
    """
    Build the `classify` demo `DatasetDict` (train / validation / test / test_unseen_speaker). The same arguments
    always give the same bytes.

    Args:
        audio_dir (`str` or `os.PathLike`):
            Folder of FSDD recordings (`scripts/demo_assets/fsdd` in this repository).
        num_train, num_validation, num_test (`int`):
            Examples per split (`num_test` for each test split); labels are balanced over the ten digits.
        seed (`int`, *optional*, defaults to 0):
            Seed of every random choice.
        probabilities (`dict`, *optional*):
            Per-modality state probabilities, as `STATE_PROBABILITIES` (which it defaults to).
        held_out_speaker (`str`, *optional*):
            FSDD speaker whose recordings appear in `test_unseen_speaker` only.
        synthetic_voices (`int`, *optional*, defaults to 0):
            Synthetic recordings (eSpeak NG: many accents, voices, rates and pitches; needs `pip install
            espeakng-loader`) added to the training pool of recordings, never to validation or test.

    Returns:
        `datasets.DatasetDict` with columns `text` (string or None), `image` (`Image(decode=False)`: PNG bytes or
        None), `audio` (`Audio(decode=False)`: 8 kHz WAV bytes or None), `label` (`ClassLabel` "zero" ... "nine"),
        `text_state`, `image_state`, `audio_state` (what was done to each modality) and `speaker`.
    """
    probabilities = _check_probabilities(probabilities if probabilities is not None else STATE_PROBABILITIES)
    audio_pools, image_pools = _load_pools(audio_dir, held_out_speaker, synthetic_voices, seed)
    features = _features(DIGIT_WORDS, "state", "string")

    def example(rng: np.random.Generator, label: int, split: str) -> dict:
        states = _draw_states(rng, probabilities)
        audio, speaker = _make_audio(rng, label, states["audio"], audio_pools[split])
        return {
            "text": _make_text(rng, label, states["text"]),
            "image": _make_image(rng, label, states["image"], image_pools[split]),
            "audio": audio,
            "label": label,
            **{f"{m}_state": state for m, state in states.items()},
            "speaker": speaker,
        }

    description = f"hf_multimodal demo: digits written, handwritten and spoken, often corrupted (seed {seed})."
    return _build(example, 10, features, (num_train, num_validation, num_test), seed, "hf_multimodal-digits", description)


def build_match_dataset(
    audio_dir: str | os.PathLike,
    modalities: Sequence[str] = ("image", "audio"),
    num_train: int = 2400,
    num_validation: int = 400,
    num_test: int = 800,
    seed: int = 0,
    held_out_speaker: str = HELD_OUT_SPEAKER,
    synthetic_voices: int = 0,
) -> datasets.DatasetDict:
    """
    Build the relational `match` task: two modalities each show a clean digit, and `label` says whether they agree
    (`ClassLabel` "different" / "same", exactly half and half per split). Each modality alone carries no information
    about the label. Columns: `text`, `image`, `audio` (None where the task has no such modality, except a note
    without any digit beside half of the image + audio examples), `label`, `text_digit`, `image_digit`,
    `audio_digit` (-1 where absent) and `speaker`.

    Args:
        modalities (`Sequence[str]`, *optional*, defaults to `("image", "audio")`):
            The two modalities whose digits are compared: two of text, image, audio.
        Other arguments: as [`build_demo_dataset`].
    """
    modalities = tuple(modalities)
    if len(modalities) != 2 or len(set(modalities)) != 2 or not set(modalities) <= {"text", "image", "audio"}:
        raise ValueError(f"modalities must be two distinct ones among text, image, audio; got {list(modalities)}.")
    audio_pools, image_pools = _load_pools(audio_dir, held_out_speaker, synthetic_voices, seed)
    features = _features(MATCH_LABELS, "digit", "int64")

    def example(rng: np.random.Generator, same: int, split: str) -> dict:
        first = int(rng.integers(10))
        digits = dict(zip(modalities, (first, first if same else _other_digits(rng, first, 1)[0])))
        row = _clean_example(rng, digits, split, audio_pools, image_pools)
        if "text" not in digits and rng.random() < 0.5:
            row["text"] = str(rng.choice(NEUTRAL_NOTES))
        return {**row, "label": same}

    description = (
        f"hf_multimodal relational demo: do the {' and the '.join(modalities)} show the same digit? (seed {seed})"
    )
    name = f"hf_multimodal-digits-match-{'-'.join(modalities)}"
    return _build(example, 2, features, (num_train, num_validation, num_test), seed, name, description)


def build_pairs_dataset(
    audio_dir: str | os.PathLike,
    num_train: int = 2400,
    num_validation: int = 400,
    num_test: int = 800,
    seed: int = 0,
    held_out_speaker: str = HELD_OUT_SPEAKER,
    synthetic_voices: int = 0,
) -> datasets.DatasetDict:
    """
    Build the `pairs` task: a note, a scan and a recording of the same digit per example, all clean, for contrastive
    alignment on unlabelled pairs. `label` (the digit, `ClassLabel` "zero" ... "nine") scores retrieval and zero-shot
    classification; alignment itself never reads it. Columns as [`build_match_dataset`].
    """
    audio_pools, image_pools = _load_pools(audio_dir, held_out_speaker, synthetic_voices, seed)
    features = _features(DIGIT_WORDS, "digit", "int64")

    def example(rng: np.random.Generator, digit: int, split: str) -> dict:
        digits = {m: digit for m in ("text", "image", "audio")}
        return {**_clean_example(rng, digits, split, audio_pools, image_pools), "label": digit}

    description = f"hf_multimodal paired digits: a note, a scan and a recording of one digit each (seed {seed})."
    return _build(example, 10, features, (num_train, num_validation, num_test), seed, "hf_multimodal-digits-pairs", description)


def build_digits_present_dataset(
    audio_dir: str | os.PathLike,
    num_train: int = 2400,
    num_validation: int = 400,
    num_test: int = 800,
    seed: int = 0,
    held_out_speaker: str = HELD_OUT_SPEAKER,
    synthetic_voices: int = 0,
) -> datasets.DatasetDict:
    """
    Build the multi-label `digits_present` task: a clean scan and a clean recording each show a digit (the scan's
    digit balanced, the recording's drawn at random, so about one example in ten shows one digit twice); `label` is
    the sorted list of digits present (`List(ClassLabel("zero" ... "nine"))`, one or two of them). Other columns as
    [`build_match_dataset`].
    """
    audio_pools, image_pools = _load_pools(audio_dir, held_out_speaker, synthetic_voices, seed)
    features = {**_features(DIGIT_WORDS, "digit", "int64"), "label": datasets.List(datasets.ClassLabel(names=list(DIGIT_WORDS)))}

    def example(rng: np.random.Generator, digit: int, split: str) -> dict:
        digits = {"image": digit, "audio": int(rng.integers(10))}
        return {**_clean_example(rng, digits, split, audio_pools, image_pools), "label": sorted(set(digits.values()))}

    description = f"hf_multimodal multi-label demo: which digits do a scan and a recording show? (seed {seed})"
    name = "hf_multimodal-digits-present"
    return _build(example, 10, features, (num_train, num_validation, num_test), seed, name, description)


def build_digit_value_dataset(
    audio_dir: str | os.PathLike,
    num_train: int = 2400,
    num_validation: int = 400,
    num_test: int = 800,
    seed: int = 0,
    held_out_speaker: str = HELD_OUT_SPEAKER,
    synthetic_voices: int = 0,
) -> datasets.DatasetDict:
    """
    Build the regression `digit_value` task: a clean scan and a clean recording of the same digit; `label` is the
    digit's value (`float32`, 0.0 ... 9.0, balanced). Other columns as [`build_match_dataset`].
    """
    audio_pools, image_pools = _load_pools(audio_dir, held_out_speaker, synthetic_voices, seed)
    features = {**_features(DIGIT_WORDS, "digit", "int64"), "label": datasets.Value("float32")}

    def example(rng: np.random.Generator, digit: int, split: str) -> dict:
        digits = {"image": digit, "audio": digit}
        return {**_clean_example(rng, digits, split, audio_pools, image_pools), "label": float(digit)}

    description = f"hf_multimodal regression demo: the value of the digit a scan and a recording show (seed {seed})."
    name = "hf_multimodal-digit-value"
    return _build(example, 10, features, (num_train, num_validation, num_test), seed, name, description)


def _features(labels: Sequence[str], per_modality: str, dtype: str) -> dict[str, datasets.features.FeatureType]:
    """The columns beside text, image and audio: the label, one `<modality>_<per_modality>` column each, the
    speaker."""
    return {
        "label": datasets.ClassLabel(names=list(labels)),
        **{f"{m}_{per_modality}": datasets.Value(dtype) for m in ("text", "image", "audio")},
        "speaker": datasets.Value("string"),
    }


def _clean_example(rng: np.random.Generator, digits: Mapping[str, int], split: str, audio_pools, image_pools) -> dict:
    """A row with clean modalities showing `digits` (`{modality: digit}`); the other modalities are None."""
    row = {"text": None, "image": None, "audio": None, "speaker": None}
    row.update({f"{m}_digit": digits.get(m, -1) for m in ("text", "image", "audio")})
    if "text" in digits:
        row["text"] = _make_text(rng, digits["text"], "clean")
    if "image" in digits:
        row["image"] = _make_image(rng, digits["image"], "clean", image_pools[split])
    if "audio" in digits:
        row["audio"], row["speaker"] = _make_audio(rng, digits["audio"], "clean", audio_pools[split])
    return row


def _build(
    example: Callable[[np.random.Generator, int, str], dict],
    num_labels: int,
    features: Mapping[str, datasets.features.FeatureType],
    sizes: Sequence[int],
    seed: int,
    name: str,
    description: str,
) -> datasets.DatasetDict:
    """The `DatasetDict` of every split, `example(rng, label, split)` making each row from its own seeded generator
    (so a row never depends on the others), labels balanced over `num_labels` and shuffled."""
    for option, size in zip(("num_train", "num_validation", "num_test"), sizes):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{option} must be a positive integer, got {size!r}.")
    sizes = dict(zip(SPLITS, (*sizes, sizes[-1])))  # num_test for each test split
    blob = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features(
        {"text": datasets.Value("string"), "image": blob, "audio": blob, **features}
    )
    splits = {}
    for split, size in sizes.items():
        labels = np.random.default_rng((seed, _SPLIT_IDS[split])).permutation(np.arange(size) % num_labels)
        rows = [
            example(np.random.default_rng((seed, _SPLIT_IDS[split], index)), int(label), split)
            for index, label in enumerate(labels)
        ]
        dataset = datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)
        # Stored as bytes and cast afterwards: `datasets` 5 needs torchcodec to *encode* Audio, not to store bytes.
        dataset = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(
            "audio", datasets.Audio(decode=False)
        )
        _describe_info(dataset.info, name, description)
        splits[split] = dataset
    return datasets.DatasetDict(splits)


def save_demo_dataset(dataset: datasets.DatasetDict, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save `dataset` with `save_to_disk` plus a README (composition, license and credit) into `output_dir`.

    Refuses a non-empty `output_dir` unless `overwrite=True`, so that no earlier data is lost by accident.
    """
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output} exists and is not empty: choose another output folder or pass overwrite=True.")
    dataset.save_to_disk(str(output))
    (output / "README.md").write_text(describe_demo_dataset(dataset))
    return output


def describe_demo_dataset(dataset: datasets.DatasetDict) -> str:
    """A Markdown description of a demo dataset: what it is, sizes, per-split label and state counts, speakers,
    license and credit."""
    first = next(iter(dataset.values()))
    label_feature = first.features["label"]
    labels = getattr(getattr(label_feature, "feature", label_feature), "names", None)  # None: a number (regression)
    states = [m for m in ("text", "image", "audio") if f"{m}_state" in first.column_names]
    header = "| split | examples | speakers | " + (f"labels ({' / '.join(labels)})" if labels else "label (mean, range)") + " |"
    header += "".join(f" {m} ({' / '.join(STATE_PROBABILITIES[m])}) |" for m in states)
    lines = [
        "# hf_multimodal demo dataset",
        "",
        first.info.description,
        "",
        "Built by `scripts/make_demo_dataset.py`; see the repository README (Demo datasets) for how each example is "
        "made and how the splits are separated.",
        "",
        header,
        "|" + "---|" * (4 + len(states)),
    ]
    for split, part in dataset.items():
        speakers = ", ".join(sorted(name for name in set(part["speaker"]) if name)) or "-"
        values = part["label"]
        if labels:  # a multi-label example counts once for each label it holds
            label_counts = Counter(v for value in values for v in (value if isinstance(value, list) else [value]))
            cells = [" / ".join(str(label_counts[index]) for index in range(len(labels)))]
        else:
            cells = [f"{np.mean(values):.2f}, {min(values):g} to {max(values):g}"]
        for modality in states:
            counts = Counter(part[f"{modality}_state"])
            cells.append(" / ".join(str(counts[state]) for state in STATE_PROBABILITIES[modality]))
        lines.append(f"| {split} | {len(part)} | {speakers} | {' | '.join(cells)} |")
    lines += ["", _CREDIT, ""]
    if any(SYNTHETIC_SPEAKER in part["speaker"] for part in dataset.values()):
        lines += [_SYNTHETIC_CREDIT, ""]
    return "\n".join(lines)


_CREDIT = (
    "Images: scikit-learn's copy of the UCI Optical Recognition of Handwritten Digits data (CC BY 4.0). Audio: adapted "
    "from the Free Spoken Digit Dataset by Zohar Jackson and contributors "
    "(https://github.com/Jakobovski/free-spoken-digit-dataset), CC BY-SA 4.0; this dataset's audio is shared under "
    "the same license."
)
_SYNTHETIC_CREDIT = (
    f"Synthetic audio (speaker `{SYNTHETIC_SPEAKER}`, training split only): English digit words spoken by eSpeak NG "
    "(https://github.com/espeak-ng/espeak-ng, GPL-3.0-or-later; the library and voices of the espeakng-loader "
    "package, not part of this dataset) in random accents, voices, rates and pitches. These clips are the "
    "synthesizer's output, not recordings of a person, and hold no FSDD material; they are shared under the same "
    "terms as the rest of this dataset's audio."
)


def _describe_info(info: datasets.DatasetInfo, name: str, description: str) -> None:
    info.dataset_name = name
    info.description = description
    info.homepage = "https://github.com/Jakobovski/free-spoken-digit-dataset"
    info.license = "CC BY-SA 4.0 (audio, adapted from FSDD); CC BY 4.0 (images, UCI handwritten digits)"
    info.citation = _CREDIT


def _check_probabilities(probabilities: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    checked = {}
    for modality, defaults in STATE_PROBABILITIES.items():
        given = dict(probabilities.get(modality, defaults))
        if set(given) != set(defaults):
            raise ValueError(f"probabilities[{modality!r}] must have the states {sorted(defaults)}, got {sorted(given)}.")
        values = np.array([given[state] for state in defaults], dtype=np.float64)
        if (values < 0).any() or not np.isclose(values.sum(), 1.0):
            raise ValueError(f"probabilities[{modality!r}] must be non-negative and sum to 1, got {given}.")
        if values[0] + values[1] == 0:
            raise ValueError(f"probabilities[{modality!r}] gives its informative states probability 0.")
        checked[modality] = {state: float(p) for state, p in zip(defaults, values)}
    unknown = set(probabilities) - set(STATE_PROBABILITIES)
    if unknown:
        raise ValueError(f"probabilities has unknown modalities {sorted(unknown)}: use text, image and audio.")
    return checked


def _draw_states(rng: np.random.Generator, probabilities: dict[str, dict[str, float]]) -> dict[str, str]:
    """One state per modality; redrawn until at most one modality is missing and at least one is informative."""
    for _ in range(1000):
        states = {m: str(rng.choice(list(p), p=list(p.values()))) for m, p in probabilities.items()}
        missing = sum(state == "missing" for state in states.values())
        if missing <= 1 and any(state in INFORMATIVE_STATES for state in states.values()):
            return states
    raise ValueError(
        f"probabilities {probabilities} almost never give an example with at most one modality missing and one "
        "informative: lower the 'missing' probabilities."
    )


def _other_digits(rng: np.random.Generator, label: int, count: int) -> list[int]:
    return [int(d) for d in rng.choice([d for d in range(10) if d != label], size=count, replace=False)]


def _digit_text(rng: np.random.Generator, digit: int) -> str:
    return DIGIT_WORDS[digit] if rng.random() < 0.7 else str(digit)


def _make_text(rng: np.random.Generator, label: int, state: str) -> str | None:
    if state == "missing":
        return None
    if state == "uninformative":
        return str(rng.choice(UNINFORMATIVE_TEXTS))
    filler, adjective = str(rng.choice(FILLERS)), str(rng.choice(ADJECTIVES))
    if state == "clean":
        return str(rng.choice(CLEAN_TEMPLATES)).format(d=_digit_text(rng, label), adj=adjective, filler=filler)
    # ambiguous: the label among one or two other candidates, in random order
    count = 2 if rng.random() < 0.6 else 3
    candidates = [label, *_other_digits(rng, label, count - 1)]
    words = [_digit_text(rng, digit) for digit in rng.permutation(candidates)]
    template = str(rng.choice(AMBIGUOUS_TEMPLATES_2 if count == 2 else AMBIGUOUS_TEMPLATES_3))
    return template.format(**dict(zip("abc", words)), filler=filler)


def _make_image(rng: np.random.Generator, label: int, state: str, pool: dict[int, list[np.ndarray]]) -> dict | None:
    if state == "missing":
        return None
    scan = pool[label][rng.integers(len(pool[label]))]
    digit = Image.fromarray((scan * (255.0 / 16.0)).astype(np.uint8)).resize((24, 24), Image.BILINEAR)
    digit = digit.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
    top, left = rng.integers(1, 8, size=2)
    canvas[top : top + 24, left : left + 24] = np.asarray(digit, dtype=np.float64)
    if state == "occluded":  # a block hides one side of the digit and then some: two or three digits stay plausible
        side, cover = int(rng.integers(4)), int(rng.integers(13, 17))
        fill = rng.uniform(0, 255)
        if side == 0:
            canvas[: top + cover] = fill
        elif side == 1:
            canvas[top + 24 - cover :] = fill
        elif side == 2:
            canvas[:, : left + cover] = fill
        else:
            canvas[:, left + 24 - cover :] = fill
        canvas += rng.normal(0, 8, canvas.shape)
    elif state == "noisy":  # faded and buried in noise
        canvas = 0.1 * canvas + rng.normal(60, 90, canvas.shape)
    else:
        canvas += rng.normal(0, 8, canvas.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _speak(rng: np.random.Generator, pool: dict[int, list], digit: int, avoid_speaker: str | None = None):
    """A random recording of `digit` (by another speaker than `avoid_speaker` where possible), sped up or slowed down
    by resampling (speed 0.87 to 1.18), at a random level."""
    clips = [clip for clip in pool[digit] if clip[0] != avoid_speaker] or pool[digit]
    speaker, waveform = clips[rng.integers(len(clips))]
    rate = int(rng.choice([6800, 7200, 7600, 8000, 8400, 8800, 9200]))  # played back at 8 kHz: tempo and pitch change
    waveform = resample_audio(waveform, AUDIO_SAMPLING_RATE, rate)
    waveform = waveform / (np.abs(waveform).max() + 1e-6) * rng.uniform(0.3, 0.9)
    return speaker, waveform.astype(np.float64)


def _add_noise(rng: np.random.Generator, waveform: np.ndarray, snr_db: float) -> np.ndarray:
    noise = rng.normal(0, 1, waveform.shape)
    if rng.random() < 0.5:  # brown-ish noise: low-frequency rumble instead of hiss
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(64) / 64, mode="same")
    signal_power = np.mean(waveform**2) + 1e-12
    noise *= np.sqrt(signal_power / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
    return waveform + noise


def _make_audio(rng: np.random.Generator, label: int, state: str, pool: dict[int, list]) -> tuple[dict | None, str | None]:
    if state == "missing":
        return None, None
    speaker, waveform = _speak(rng, pool, label)
    if state == "overlapped":  # another speaker says another digit at a similar level, roughly at the same time
        _, other = _speak(rng, pool, _other_digits(rng, label, 1)[0], avoid_speaker=speaker)
        other *= np.sqrt(np.mean(waveform**2) / (np.mean(other**2) + 1e-12)) * 10 ** (rng.uniform(-2, 2) / 20)
        max_shift = int(0.15 * AUDIO_SAMPLING_RATE)
        shift = int(rng.integers(-max_shift, max_shift + 1))
        start_a, start_b = max(0, shift), max(0, -shift)
        mixed = np.zeros(max(start_a + len(waveform), start_b + len(other)))
        mixed[start_a : start_a + len(waveform)] += waveform
        mixed[start_b : start_b + len(other)] += other
        waveform = _add_noise(rng, mixed, rng.uniform(20, 35))
    elif state == "noisy":
        waveform = _add_noise(rng, waveform, rng.uniform(-15, -9))
    else:
        waveform = _add_noise(rng, waveform, rng.uniform(20, 35))
    waveform = waveform / (np.abs(waveform).max() + 1e-9) * 0.9
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform.astype(np.float32), AUDIO_SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return {"bytes": buffer.getvalue(), "path": None}, speaker


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder to write the DatasetDict to (save_to_disk).")
    parser.add_argument("--task", choices=TASKS, default="classify", help="Which dataset to build (see above).")
    parser.add_argument(
        "--match", nargs=2, default=["image", "audio"], metavar="MODALITY",
        help="With --task match: the two modalities whose digits are compared (default: image audio).",
    )
    parser.add_argument(
        "--audio_dir",
        default=str(VENDORED_AUDIO_DIR),
        help="Folder of Free Spoken Digit Dataset recordings (default: the vendored subset).",
    )
    parser.add_argument("--held_out_speaker", default=HELD_OUT_SPEAKER, help="Speaker kept for test_unseen_speaker.")
    parser.add_argument("--num_train", type=int, default=2400)
    parser.add_argument("--num_validation", type=int, default=400)
    parser.add_argument("--num_test", type=int, default=800, help="Examples of each test split.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--synthetic_voices", type=int, default=0, metavar="N",
        help="Add N synthetic recordings (eSpeak NG voices; pip install espeakng-loader) to the training split's "
        "recordings only (default 0: real speakers only).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace the content of a non-empty --output_dir.")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    common = {
        "num_train": args.num_train,
        "num_validation": args.num_validation,
        "num_test": args.num_test,
        "seed": args.seed,
        "held_out_speaker": args.held_out_speaker,
        "synthetic_voices": args.synthetic_voices,
    }
    if args.task == "match":
        dataset = build_match_dataset(args.audio_dir, modalities=args.match, **common)
    elif args.task == "pairs":
        dataset = build_pairs_dataset(args.audio_dir, **common)
    elif args.task == "digits_present":
        dataset = build_digits_present_dataset(args.audio_dir, **common)
    elif args.task == "digit_value":
        dataset = build_digit_value_dataset(args.audio_dir, **common)
    else:
        dataset = build_demo_dataset(args.audio_dir, **common)
    save_demo_dataset(dataset, args.output_dir, overwrite=args.overwrite)
    print(describe_demo_dataset(dataset))
    print(f"Saved to {args.output_dir}")


if __name__ == "__main__":
    main()
