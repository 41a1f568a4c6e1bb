#!/usr/bin/env python
"""Benchmark hf_multimodal: ratios of things timed side by side in one run (table, benchmark.json, benchmark.png).

    python scripts/benchmark.py                       # default model, CPU, a few minutes on 2 cores
    python scripts/benchmark.py --size tiny           # seconds: a smoke run
    python scripts/benchmark.py --device cuda --bf16 --compile --output-dir gpu_results
    python scripts/benchmark.py --only audio preprocessing
    python scripts/benchmark.py --only alternatives   # item 8 alone: the stock classifiers and scikit-learn
    python scripts/benchmark.py --only compile checkpointing   # items 9 and 10 (opt-in): torch.compile, checkpointing
    python scripts/benchmark.py --only data_loading   # item 11 alone: collator CPU share, 0 vs 2 DataLoader workers
    python scripts/benchmark.py --only importance     # item 12 alone: pipeline with / without modality importance
    python scripts/benchmark.py --only bfloat16       # item 13 alone: pipeline in bfloat16 vs float32


Absolute times on shared machines mean little; ratios of two code paths timed in the same process, with warm-up,
repetitions, interleaving and medians, do. Item 8 instead puts the project's model beside the alternatives a user has
(stock one-modality transformers classifiers, a scikit-learn baseline): accuracy and CPU seconds of training on the
same small demo task. Each measurement is a function taking a
[`BenchmarkContext`] and returning [`BenchmarkRow`]s; [`run_benchmarks`] runs a selection of them and
[`write_report`] prints the table and writes `benchmark.json` and `benchmark.png`. Needs `pip install
hf_multimodal[bench]`.

Example:

```python
>>> from benchmark import BenchmarkSettings, run_benchmarks, write_report
>>> report = run_benchmarks(BenchmarkSettings(size="tiny", only=("audio", "preprocessing")))
>>> paths = write_report(report, "benchmark_results")  # doctest: +SKIP
```
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from transformers import BatchFeature

from hf_multimodal import (
    FUSION_TYPES,
    MultimodalClassificationPipeline,
    MultimodalConfig,
    MultimodalForSequenceClassification,
    MultimodalProcessor,
    WaveNetConfig,
    WaveNetModel,
)
from hf_multimodal.image_processing_multimodal import IMAGENET_MEAN, IMAGENET_STD
from hf_multimodal.modeling_multimodal import ENCODER_ATTRIBUTES
from hf_multimodal.training_args import cpu_flags

BENCHMARK_NAMES: tuple[str, ...] = (
    "training",
    "inference",
    "fusion",
    "compute",
    "audio",
    "preprocessing",
    "memory",
    "alternatives",
    "compile",
    "checkpointing",
    "data_loading",
    "importance",
    "bfloat16",
)
"""The measurements, in item order (1-13); `--only` takes a subset of these names."""

OPT_IN_BENCHMARKS: tuple[str, ...] = ("compile", "checkpointing")
"""Measurements run only when `--only` names them: each trains or compiles for minutes at the default size."""

TINY_CONFIG: dict[str, Any] = {
    "text_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "vision_config": {"hidden_sizes": [16, 32], "depths": [1, 1], "embedding_size": 16, "layer_type": "basic"},
    "audio_config": {"hidden_size": 32, "num_stacks": 2, "layers_per_stack": 2, "frontend_channels": [16, 32, 32, 32]},
    "fusion_hidden_size": 32,
    "fusion_num_heads": 2,
}
"""Sub-configs of the `tiny` size: hidden sizes of 32 and 2 layers, as in the test suite."""

FUSION_TARGETS: dict[str, float] = {"concat": 1.05, "weighted_sum": 1.05, "gated": 1.05, "transformer": 1.2}
"""Upper bounds of (fused forward time / encoders-alone time); the other heads are reported without a target."""

_WORDS = (  # noqa: SIM905 (one string reads better than 49 quoted words)
    "the a red blue green small large loud quiet bird dog cat song voice picture sound digit seven three nine "
    "photo shows quick brown fox jumps over lazy river city night morning happy sad review product fast slow "
    "delivery great poor quality speaker says number clearly noise music street"
).split()


@dataclass(frozen=True)
class Workload:
    """Sizes of one benchmark run.

    Args:
        config_kwargs: keyword arguments of the benchmarked `MultimodalConfig` (empty: the default model).
        batch_size: examples per batch for training, inference and memory.
        text_words: words per text (one token each; with [CLS] and [SEP] they fill `max_text_length` tokens).
        max_text_length: the processor's token limit.
        image_size: (width, height) of the raw images given to the processors.
        audio_seconds: length of each raw 16 kHz clip.
        fusion_batch_size: batch of the fusion-cost forwards.
        audio_encoder_batch, audio_encoder_seconds: the audio-encoder throughput batch.
        train_steps: timed optimizer steps of the Trainer and of the hand loop each (after one warm-up step each).
        repeat, warmup: timed repetitions and untimed warm-up calls of every other timing.
        pipeline_examples: examples classified one at a time, in turn, for the batch-1 inference comparison
            (`pipeline_examples * repeat` timed rounds of one example).
        alternatives_train, alternatives_test, alternatives_steps: item 8's digits demo (training and `test`
            examples) and the Trainer steps (at `batch_size`) of each model trained on it.
        compile_batches: item 9's digits-demo training batches (of `batch_size`).
        loading_batches: item 11's digits-demo training batches (of `LOADING_BATCH_SIZE`).
    """

    name: str
    config_kwargs: dict[str, Any]
    batch_size: int
    text_words: int
    max_text_length: int
    image_size: tuple[int, int]
    audio_seconds: float
    fusion_batch_size: int
    audio_encoder_batch: int
    audio_encoder_seconds: float
    train_steps: int
    repeat: int
    warmup: int
    pipeline_examples: int
    alternatives_train: int
    alternatives_test: int
    alternatives_steps: int
    compile_batches: int
    loading_batches: int


WORKLOADS: dict[str, Workload] = {
    "tiny": Workload(
        name="tiny",
        config_kwargs={**TINY_CONFIG, "num_labels": 3},
        batch_size=4,
        text_words=14,
        max_text_length=16,
        image_size=(64, 48),
        audio_seconds=0.5,
        fusion_batch_size=4,
        audio_encoder_batch=2,
        audio_encoder_seconds=1.0,
        train_steps=2,
        repeat=3,
        warmup=1,
        pipeline_examples=2,
        alternatives_train=40,
        alternatives_test=40,
        alternatives_steps=3,
        compile_batches=3,
        loading_batches=2,
    ),
    "default": Workload(
        name="default",
        config_kwargs={},
        batch_size=16,
        text_words=126,
        max_text_length=128,
        image_size=(500, 375),
        audio_seconds=5.0,
        fusion_batch_size=2,
        audio_encoder_batch=8,
        audio_encoder_seconds=10.0,
        train_steps=3,
        repeat=3,
        warmup=1,
        pipeline_examples=3,
        alternatives_train=480,
        alternatives_test=400,
        alternatives_steps=600,
        compile_batches=24,
        loading_batches=8,
    ),
}
"""`tiny`: seconds, for tests. `default`: `MultimodalConfig()` (BERT-base, ResNet-50, default WaveNet) at batch 16
with 128 tokens, 224x224 crops of 500x375 images and 5 s clips; a few minutes on 2 CPU cores. To keep it so, the
largest items use fewer repetitions or smaller batches: 3 timed training steps per loop, fusion forwards at batch 2,
batch-1 inference over 3 examples. Item 8 trains tiny models (the `tiny` sub-configs) for 600 steps of batch 16 on 480
digits demo examples (20 epochs). Item 9 compiles the demo model (`DEMO_MODEL_CONFIG`) over 24 batches."""


@dataclass
class BenchmarkSettings:
    """What to run and where.

    Args:
        size: a key of `WORKLOADS` ("tiny" or "default").
        device: "cpu" or "cuda" (timings synchronise the GPU; memory is `torch.cuda.max_memory_allocated`).
        bf16: run forwards and training under `torch.autocast(dtype=torch.bfloat16)` (Trainer: `bf16=True`).
        compile: wrap the timed models in `torch.compile` (Trainer: `torch_compile=True`).
        only: a subset of `BENCHMARK_NAMES`; None runs all but the `OPT_IN_BENCHMARKS`.
        seed: seed of the random weights and inputs.
        threads: `torch.set_num_threads` for the run (None: torch's default, one per core). On a machine shared with
            other jobs, 1 thread avoids the stalls of OpenMP threads waiting for a core (see the README).
    """

    size: str = "default"
    device: str = "cpu"
    bf16: bool = False
    compile: bool = False
    only: Sequence[str] | None = None
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        if self.size not in WORKLOADS:
            raise ValueError(f"size must be one of {', '.join(WORKLOADS)}, got {self.size!r}.")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.threads is not None and (
            not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1
        ):
            raise ValueError(f"threads must be a positive integer or None (torch's default), got {self.threads!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                "device='cuda' but torch.cuda.is_available() is False: run on a GPU machine or use --device cpu."
            )
        if self.only is not None:
            unknown = sorted(set(self.only) - set(BENCHMARK_NAMES))
            if unknown or not self.only:
                raise ValueError(
                    f"unknown benchmark names {unknown}: choose from {', '.join(BENCHMARK_NAMES)}."
                    if unknown
                    else f"only is empty: choose from {', '.join(BENCHMARK_NAMES)}, or pass None for all."
                )
            self.only = tuple(name for name in BENCHMARK_NAMES if name in self.only)


@dataclass
class BenchmarkRow:
    """One line of the results table.

    Args:
        item: the measurement's number (1-8: issue order; 9: torch.compile, 10: activation checkpointing, 11: data
            loading).
        name: what was measured.
        value: the number (None when it could not be measured here; `note` says why).
        unit: "ratio", "x real time", "MiB", "share", ...
        target: e.g. ">= 0.95" (None: reported without a target).
        met: whether `value` meets `target` (None without a target or a value).
        note: how it was measured and the raw medians.
        extra: raw numbers for the JSON file.
    """

    item: int
    name: str
    value: float | None
    unit: str
    target: str | None = None
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkReport:
    """Rows plus the machine, versions, settings and load averages they were measured under."""

    rows: list[BenchmarkRow]
    meta: dict[str, Any]


def check_target(value: float | None, target: str | None) -> bool | None:
    """Whether `value` meets `target` (">= x" or "<= x"); None when either is missing.

    Example:

    ```python
    >>> check_target(0.97, ">= 0.95"), check_target(1.3, "<= 1.2"), check_target(None, ">= 1")
    (True, False, None)
    ```
    """
    if value is None or target is None:
        return None
    operator, threshold = target.split()
    if operator not in (">=", "<="):
        raise ValueError(f"target must look like '>= 0.95' or '<= 1.2', got {target!r}.")
    return value >= float(threshold) if operator == ">=" else value <= float(threshold)


def make_row(item: int, name: str, value: float | None, unit: str, target: str | None = None, note: str = "", **extra):
    """A [`BenchmarkRow`] with `met` filled in from `value` and `target`."""
    return BenchmarkRow(item, name, value, unit, target, check_target(value, target), note, extra)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------------------------------------------------
# Timing and memory primitives
# --------------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timings(dict):
    """Wall-clock seconds per call, by name (a dict of lists), with the process CPU seconds of the same calls in
    `.cpu` (all threads: it leaves out time spent waiting for a core, but counts OpenMP threads spinning while they
    wait for one another, so it is disturbed too when other processes hold the cores)."""

    def __init__(self, names: Sequence[str]):
        super().__init__({name: [] for name in names})
        self.cpu: dict[str, list[float]] = {name: [] for name in names}

    def ratio(self, numerator: str, denominator: str, cpu: bool = False) -> float:
        """The median over rounds of numerator / denominator timed in the same round (wall or CPU seconds): a paired
        statistic, robust to the load of a shared machine changing between rounds."""
        source = self.cpu if cpu else self
        return median([top / max(bottom, 1e-12) for top, bottom in zip(source[numerator], source[denominator])])

    def ratio_of_medians(self, numerator: str, denominator: str) -> float:
        """median(numerator) / median(denominator) of the wall-clock seconds."""
        return median(self[numerator]) / median(self[denominator])


def time_interleaved(
    functions: dict[str, Callable[[], Any]], repeat: int, warmup: int = 1, device: torch.device | str = "cpu"
) -> Timings:
    """Time several functions side by side: `warmup` untimed calls of each, then `repeat` rounds in which every
    function runs once, in an order rotated every round so that none always runs first. Returns seconds per call.

    Example:

    ```python
    >>> times = time_interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(2000))}, repeat=3)
    >>> sorted(times), len(times["a"]), len(times.cpu["b"])
    (['a', 'b'], 3, 3)
    ```
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}.")
    device = torch.device(device)
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    times = Timings(names)
    for round_index in range(repeat):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            functions[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            times.cpu[name].append(time.process_time() - cpu_start)
    return times


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, repeat: int = 5) -> tuple[float, float]:
    """Dense matmul throughput of square matrices on `device`, the reference peak of this process: FLOP per
    wall-clock second and FLOP per process CPU second."""
    size = 2048 if device.type == "cpu" else 8192
    left = torch.randn(size, size, device=device, dtype=dtype)
    right = torch.randn(size, size, device=device, dtype=dtype)
    times = time_interleaved({"matmul": lambda: torch.mm(left, right)}, repeat=repeat, warmup=2, device=device)
    return 2 * size**3 / median(times["matmul"]), 2 * size**3 / median(times.cpu["matmul"])


def _release_free_memory() -> None:
    """Return freed heap memory to the OS, so a resident-set baseline does not count cached free blocks."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} missing from /proc/self/status")


def measure_peak_memory(function: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Peak memory while `function` runs, in MiB.

    On CUDA: `peak_mib` is `torch.cuda.max_memory_allocated` and `increase_mib` its excess over the memory allocated
    before the call. On Linux CPUs: the peak resident set size (`VmHWM`, reset through `/proc/self/clear_refs`) and
    its excess over the resident set size before the call. Elsewhere `ValueError` says it is not measurable.
    """
    mib = 1024.0**2
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        method = "torch.cuda.max_memory_allocated"
        return {"peak_mib": peak / mib, "increase_mib": (peak - before) / mib, "method": method}
    if not sys.platform.startswith("linux"):
        raise ValueError("peak CPU memory needs Linux (/proc/self/clear_refs and VmHWM); run on Linux or on CUDA.")
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets the peak resident set size (VmHWM) to the current one
    except OSError as error:
        raise ValueError(f"cannot reset the peak resident set size ({error}): peak CPU memory not measurable here.")
    before = _proc_status_bytes("VmRSS")
    function()
    peak = _proc_status_bytes("VmHWM")
    return {"peak_mib": peak / mib, "increase_mib": (peak - before) / mib, "method": "VmHWM (peak RSS), reset"}


# --------------------------------------------------------------------------------------------------------------------
# Shared model, processor and inputs
# --------------------------------------------------------------------------------------------------------------------


class _RepeatedExamples(Dataset):
    """`length` examples cycling through `examples` (dicts of tensors): as many equal batches as a run needs."""

    def __init__(self, examples: list[dict[str, torch.Tensor]], length: int):
        self.examples = examples
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.examples[index % len(self.examples)]


class BenchmarkContext:
    """The model, processor and inputs shared by the measurements of one run (built on first use)."""

    def __init__(self, settings: BenchmarkSettings):
        self.settings = settings
        self.workload = WORKLOADS[settings.size]
        self.device = torch.device(settings.device)
        self.dtype = torch.bfloat16 if settings.bf16 else torch.float32
        self._tmp = tempfile.TemporaryDirectory(prefix="hf_multimodal_benchmark_")

    def close(self) -> None:
        self._tmp.cleanup()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast under `--bf16`, nothing otherwise."""
        if self.settings.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def maybe_compile(self, module: torch.nn.Module) -> Callable:
        """`torch.compile(module)` under `--compile` (sharing its parameters), the module itself otherwise."""
        return torch.compile(module) if self.settings.compile else module

    def sync(self) -> None:
        synchronize(self.device)

    @property
    def bfloat16_has_hardware(self) -> bool:
        """Whether bfloat16 runs on hardware units here: a GPU, or a CPU with AMX (`amx_bf16`); elsewhere torch
        emulates it, so no bfloat16 peak or speed-up can be reached."""
        return self.device.type != "cpu" or cpu_has_amx_bf16()

    @cached_property
    def config(self) -> MultimodalConfig:
        return MultimodalConfig(**self.workload.config_kwargs)

    @cached_property
    def model(self) -> MultimodalForSequenceClassification:
        torch.manual_seed(self.settings.seed)
        return MultimodalForSequenceClassification(self.config).to(self.device).eval()

    @cached_property
    def processor(self) -> MultimodalProcessor:
        return MultimodalProcessor(max_text_length=self.workload.max_text_length)

    @cached_property
    def raw_examples(self) -> list[dict[str, Any]]:
        """`batch_size` examples with text, a PIL image and a 16 kHz clip each."""
        from PIL import Image

        rng = np.random.default_rng(self.settings.seed)
        width, height = self.workload.image_size
        samples = int(self.workload.audio_seconds * 16000)
        return [
            {
                "text": " ".join(rng.choice(_WORDS, self.workload.text_words)),
                "image": Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
                "audio": (0.1 * rng.standard_normal(samples)).astype(np.float32),
            }
            for _ in range(self.workload.batch_size)
        ]

    def process(self, examples: list[dict[str, Any]]) -> BatchFeature:
        """Run the processor on `examples` (dicts with "text", "image", "audio")."""
        return self.processor(
            text=[example["text"] for example in examples],
            images=[example["image"] for example in examples],
            audio=[example["audio"] for example in examples],
            sampling_rate=16000,
        )

    @cached_property
    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Processed inputs of `raw_examples`, with labels, on the device."""
        batch = dict(self.process(self.raw_examples))
        generator = torch.Generator().manual_seed(self.settings.seed)
        batch["labels"] = torch.randint(0, self.config.num_labels, (self.workload.batch_size,), generator=generator)
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    def inputs_slice(self, batch_size: int) -> dict[str, torch.Tensor]:
        return {name: tensor[:batch_size] for name, tensor in self.model_inputs.items()}

    @cached_property
    def model_folder(self) -> str:
        """A folder with the model and processor saved, for `pipeline(model=folder)`."""
        folder = os.path.join(self._tmp.name, "model")
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        return folder

    @cached_property
    def training(self) -> TrainingMeasurement:
        """The alternating Trainer / hand-loop measurement, shared by items 1 and 4."""
        return measure_training(self)


# --------------------------------------------------------------------------------------------------------------------
# 1. Trainer vs hand-written loop (also provides the step times of item 4)
# --------------------------------------------------------------------------------------------------------------------


def _training_arguments(ctx: BenchmarkContext, steps: int, **overrides):
    """The benchmark's `TrainingArguments` (no saving, logging or workers; the run's device, dtype and seed), with
    `overrides`."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **{
            "output_dir": os.path.join(ctx._tmp.name, "trainer"),
            "per_device_train_batch_size": ctx.workload.batch_size,
            "max_steps": steps,
            "learning_rate": 1e-5,
            "train_sampling_strategy": "sequential",  # the same batches, in the same order, as the hand-written loop
            "dataloader_num_workers": 0,
            "report_to": "none",
            "save_strategy": "no",
            "logging_strategy": "no",
            "disable_tqdm": True,
            "use_cpu": ctx.device.type == "cpu",
            "bf16": ctx.settings.bf16,
            "torch_compile": ctx.settings.compile,
            "seed": ctx.settings.seed,
            **overrides,
        }
    )


def _training_dataset(ctx: BenchmarkContext, steps: int) -> _RepeatedExamples:
    inputs = {name: tensor.cpu() for name, tensor in ctx.model_inputs.items()}
    examples = [{name: tensor[row] for name, tensor in inputs.items()} for row in range(ctx.workload.batch_size)]
    return _RepeatedExamples(examples, steps * ctx.workload.batch_size)


class HandLoop:
    """A plain PyTorch training loop over the benchmark batches.

    Its optimizer and scheduler come from `Trainer.create_optimizer_and_scheduler` with the Trainer's own arguments,
    and it clips gradients to the same `max_grad_norm`, so that only the loop differs from `Trainer.train()`.
    """

    def __init__(self, ctx: BenchmarkContext, steps: int):
        from transformers import Trainer, default_data_collator

        self.ctx = ctx
        self.args = _training_arguments(ctx, steps)
        self.model = ctx.model
        helper = Trainer(model=self.model, args=self.args)
        helper.create_optimizer_and_scheduler(num_training_steps=steps)
        self.optimizer, self.scheduler = helper.optimizer, helper.lr_scheduler
        loader = DataLoader(
            _training_dataset(ctx, steps), batch_size=ctx.workload.batch_size, collate_fn=default_data_collator
        )
        self.batches = iter(loader)
        self.forward = ctx.maybe_compile(self.model)

    def step(self) -> None:
        """One optimizer step on the next batch of the loader."""
        batch = {name: tensor.to(self.ctx.device, non_blocking=True) for name, tensor in next(self.batches).items()}
        self.model.train()
        with self.ctx.autocast():
            loss = self.forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ctx.sync()


@dataclass
class TrainingMeasurement:
    """Seconds per step of `Trainer.train()` and of the hand-written loop (timed in alternation), FLOPs of one
    training step, and dense matmul FLOP/s samples taken between the steps."""

    trainer_seconds: list[float] = field(default_factory=list)
    loop_seconds: list[float] = field(default_factory=list)
    trainer_cpu_seconds: list[float] = field(default_factory=list)
    loop_cpu_seconds: list[float] = field(default_factory=list)
    flops_per_step: int = 0
    matmul_flops_per_second: list[float] = field(default_factory=list)
    matmul_flops_per_cpu_second: list[float] = field(default_factory=list)

    def pair_ratios(self, cpu: bool = False) -> list[float]:
        """Hand-loop time / Trainer time of each adjacent pair of steps."""
        loop = self.loop_cpu_seconds if cpu else self.loop_seconds
        trainer = self.trainer_cpu_seconds if cpu else self.trainer_seconds
        return [hand / managed for hand, managed in zip(loop, trainer)]


def measure_training(ctx: BenchmarkContext) -> TrainingMeasurement:
    """Alternate Trainer steps and hand-loop steps one by one, on the same model and equal batches.

    `Trainer.train()` runs `train_steps + 1` steps; at the end of each (`on_step_end`) a callback runs one step of
    the hand-written loop and a short matmul timing. A Trainer step is timed from the end of that callback to its
    next `on_step_end` (fetching the batch, forward, backward, clipping, the optimizer, its callbacks and
    bookkeeping); a hand-loop step from fetching its batch to `zero_grad`. Both first steps are warm-ups (memory,
    optimizer state); the hand loop's warm-up step runs under `torch.utils.flop_counter.FlopCounterMode`, which
    counts the FLOPs of a training step. Alternating step by step exposes both loops to the same machine load.
    """
    from transformers import PrinterCallback, Trainer, TrainerCallback, default_data_collator

    steps = ctx.workload.train_steps + 1
    loop = HandLoop(ctx, steps)
    result = TrainingMeasurement()
    clock = {}

    class Alternate(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ctx.sync()
            if clock:
                result.trainer_seconds.append(time.perf_counter() - clock["wall"])
                result.trainer_cpu_seconds.append(time.process_time() - clock["cpu"])
            if not result.flops_per_step:
                with FlopCounterMode(display=False) as counter:
                    loop.step()
                result.flops_per_step = counter.get_total_flops()
            else:
                start, cpu_start = time.perf_counter(), time.process_time()
                loop.step()
                result.loop_seconds.append(time.perf_counter() - start)
                result.loop_cpu_seconds.append(time.process_time() - cpu_start)
            wall, cpu = matmul_flops_per_second(ctx.device, ctx.dtype, repeat=2)
            result.matmul_flops_per_second.append(wall)
            result.matmul_flops_per_cpu_second.append(cpu)
            clock.update(wall=time.perf_counter(), cpu=time.process_time())

    trainer = Trainer(
        model=ctx.model,
        args=_training_arguments(ctx, steps),
        train_dataset=_training_dataset(ctx, steps),
        data_collator=default_data_collator,
        callbacks=[Alternate()],
    )
    trainer.remove_callback(PrinterCallback)  # its end-of-training print is noise in the benchmark output
    trainer.train()
    ctx.model.eval()
    return result


def bench_training(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 1: `Trainer` steps vs a hand-written PyTorch loop on the same model, batches and optimizer (see
    [`measure_training`]). The value is the median over adjacent step pairs of hand-loop time / Trainer time
    (1: no Trainer overhead)."""
    measured = ctx.training
    trainer, loop = median(measured.trainer_seconds), median(measured.loop_seconds)
    cpu_ratio = median(measured.pair_ratios(cpu=True))
    return [
        make_row(
            1,
            "training throughput: Trainer / hand-written loop",
            median(measured.pair_ratios()),
            "ratio",
            ">= 0.95",
            f"batch {ctx.workload.batch_size}; median s/step: Trainer {trainer:.3f}, loop {loop:.3f} "
            f"({len(measured.loop_seconds)} alternating pairs after warm-up); CPU-time ratio {cpu_ratio:.3f}",
            trainer_step_seconds=measured.trainer_seconds,
            loop_step_seconds=measured.loop_seconds,
            trainer_step_cpu_seconds=measured.trainer_cpu_seconds,
            loop_step_cpu_seconds=measured.loop_cpu_seconds,
            cpu_ratio=cpu_ratio,
        )
    ]


# --------------------------------------------------------------------------------------------------------------------
# 2. pipeline vs processor + model by hand
# --------------------------------------------------------------------------------------------------------------------


def _pipeline_inputs(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"text": e["text"], "image": e["image"], "audio": {"array": e["audio"], "sampling_rate": 16000}}
        for e in examples
    ]


def _cycling(function: Callable[[Any], Any], items: Sequence[Any]) -> Callable[[], Any]:
    """A function of no arguments that calls `function` on the next of `items` (cycling) at every call."""
    calls = itertools.count()
    return lambda: function(items[next(calls) % len(items)])


def bench_inference(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 2: `pipeline("multimodal-classification")` vs the processor and model called by hand on the same raw
    inputs, at batch 1 and at `batch_size`. The hand path includes the softmax and label lookup the pipeline returns.
    Also reports the share of the hand path spent in the processor.

    Batch 1: every timed call classifies one example (`pipe(example)`, the way single examples are classified),
    cycling through `pipeline_examples` examples; the pipeline, the hand path and the processor alone alternate
    call by call (rotated) for `pipeline_examples * repeat` rounds after `warmup` rounds. Batch `batch_size`: one
    pipeline call warms the shared model at that shape, then `repeat` rotated rounds. Values are medians over rounds
    of the ratio within a round ([`Timings.ratio`]); the details also give the medians of the times.
    """
    from transformers import pipeline

    workload = ctx.workload
    pipe = pipeline("multimodal-classification", model=ctx.model_folder, device=ctx.device)
    model = pipe.model.eval()
    if ctx.settings.compile:
        model.compile()
    id2label = model.config.id2label

    def by_hand(examples: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        batch = ctx.process(examples).to(ctx.device)
        with torch.inference_mode(), ctx.autocast():
            probabilities = model(**batch).logits.float().softmax(-1).cpu()
        scores, indices = probabilities.sort(dim=-1, descending=True)
        return [
            [{"label": id2label[int(i)], "score": float(s)} for s, i in zip(row_scores, row_indices)]
            for row_scores, row_indices in zip(scores, indices)
        ]

    def preprocess_only(examples: list[dict[str, Any]]) -> None:
        ctx.process(examples).to(ctx.device)

    single = ctx.raw_examples[: workload.pipeline_examples]
    single_inputs = _pipeline_inputs(single)
    full, full_inputs = ctx.raw_examples, _pipeline_inputs(ctx.raw_examples)
    cases = {
        1: (
            {
                "pipeline": _cycling(pipe, single_inputs),
                "by_hand": _cycling(lambda example: by_hand([example]), single),
                "preprocess": _cycling(lambda example: preprocess_only([example]), single),
            },
            len(single) * workload.repeat,
            workload.warmup,
        ),
        workload.batch_size: (
            {
                "pipeline": lambda: pipe(full_inputs, batch_size=workload.batch_size),
                "by_hand": lambda: by_hand(full),
                "preprocess": lambda: preprocess_only(full),
            },
            workload.repeat,
            0,  # warmed below
        ),
    }
    rows = []
    for batch_size, (functions, rounds, warmup) in cases.items():
        with ctx.autocast():
            if batch_size > 1:
                functions["pipeline"]()  # warms the model (shared by both paths) at this batch shape
            times = time_interleaved(functions, rounds, warmup, ctx.device)
        pipeline_s, hand_s, preprocess_s = (median(times[name]) for name in ("pipeline", "by_hand", "preprocess"))
        if batch_size == 1:
            work = f"{rounds} rounds of 1 example (cycling through {len(single)})"
        else:
            work = f"{rounds} rounds of {len(full)} examples"
        rows.append(
            make_row(
                2,
                f"inference batch {batch_size}: pipeline / processor + model by hand",
                times.ratio("by_hand", "pipeline"),
                "ratio",
                ">= 0.90",
                f"{work}; median s/call: pipeline {pipeline_s:.3f}, by hand {hand_s:.3f} (ratio of medians "
                f"{times.ratio_of_medians('by_hand', 'pipeline'):.3f}); CPU-time ratio "
                f"{times.ratio('by_hand', 'pipeline', cpu=True):.3f}",
                pipeline_seconds=times["pipeline"],
                by_hand_seconds=times["by_hand"],
                pipeline_cpu_seconds=times.cpu["pipeline"],
                by_hand_cpu_seconds=times.cpu["by_hand"],
                cpu_ratio=times.ratio("by_hand", "pipeline", cpu=True),
                ratio_of_medians=times.ratio_of_medians("by_hand", "pipeline"),
            )
        )
        rows.append(
            make_row(
                2,
                f"inference batch {batch_size}: share of time in preprocessing",
                times.ratio("preprocess", "by_hand"),
                "share",
                None,
                f"processor {preprocess_s:.3f} s of {hand_s:.3f} s by hand (medians per call)",
                preprocess_seconds=times["preprocess"],
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# 3. Fusion cost
# --------------------------------------------------------------------------------------------------------------------


def model_sharing_encoders(
    base: MultimodalForSequenceClassification, fusion_type: str
) -> MultimodalForSequenceClassification:
    """A classifier with `fusion_type` whose encoders are the very modules of `base` (no copy); its projections,
    fusion head and classifier are freshly initialised. Built on the meta device, so no encoder is allocated twice.
    """
    config = MultimodalConfig(**{**base.config.to_dict(), "fusion_type": fusion_type})
    with torch.device("meta"):
        model = MultimodalForSequenceClassification(config)
    for attribute in ENCODER_ATTRIBUTES.values():
        if getattr(model.multimodal, attribute) is not None:
            setattr(model.multimodal, attribute, getattr(base.multimodal, attribute))
    device = next(base.parameters()).device
    model.multimodal.logit_scale = torch.nn.Parameter(torch.tensor(config.logit_scale_init_value, device=device))
    for module in (model.multimodal.projections, model.multimodal.fusion, model.classifier):
        module.to_empty(device=device)
        module.apply(model._init_weights)
    return model.eval()


def encoder_calls(
    model: MultimodalForSequenceClassification, inputs: dict[str, torch.Tensor]
) -> list[tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
    """(encoder, keyword arguments) of every encoder of `model` on `inputs`: the work a fused forward cannot avoid."""
    multimodal = model.multimodal
    calls = []
    for modality in model.config.modalities:
        kwargs = {
            encoder_name: inputs[name]
            for name, encoder_name in multimodal._encoder_kwargs[modality].items()
            if inputs.get(name) is not None
        }
        calls.append((getattr(multimodal, ENCODER_ATTRIBUTES[modality]), kwargs))
    return calls


def bench_fusion(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 3: forward of the whole classifier vs its encoders alone, for every fusion type (inference, same
    encoders and inputs, interleaved; medians over rounds of the ratio within a round)."""
    inputs = ctx.inputs_slice(ctx.workload.fusion_batch_size)
    inputs = {name: tensor for name, tensor in inputs.items() if name != "labels"}
    models = {fusion: model_sharing_encoders(ctx.model, fusion) for fusion in FUSION_TYPES}
    calls = [(ctx.maybe_compile(encoder), kwargs) for encoder, kwargs in encoder_calls(ctx.model, inputs)]
    functions: dict[str, Callable[[], Any]] = {"encoders": lambda: [encoder(**kwargs) for encoder, kwargs in calls]}
    for fusion, model in models.items():
        forward = ctx.maybe_compile(model)
        functions[fusion] = lambda forward=forward: forward(**inputs)
    with torch.inference_mode(), ctx.autocast():
        times = time_interleaved(functions, ctx.workload.repeat, ctx.workload.warmup, ctx.device)
    base = median(times["encoders"])
    rows = []
    for fusion in FUSION_TYPES:
        target = FUSION_TARGETS.get(fusion)
        rows.append(
            make_row(
                3,
                f"fusion cost {fusion}: fused forward / encoders alone",
                times.ratio(fusion, "encoders"),
                "ratio",
                f"<= {target}" if target is not None else None,
                f"batch {ctx.workload.fusion_batch_size}; median s: fused {median(times[fusion]):.3f}, encoders "
                f"{base:.3f} (ratio of medians {median(times[fusion]) / base:.3f}); CPU-time ratio "
                f"{times.ratio(fusion, 'encoders', cpu=True):.3f}",
                fused_seconds=times[fusion],
                encoders_seconds=times["encoders"],
                cpu_ratio=times.ratio(fusion, "encoders", cpu=True),
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# 4. Compute efficiency
# --------------------------------------------------------------------------------------------------------------------


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU advertises AMX bfloat16 tiles (`amx_bf16`): without them a CPU's bfloat16 matmuls are
    emulated, so no bfloat16 peak of the hardware can be reached (False where the flags cannot be read)."""
    return "amx_bf16" in (cpu_flags() or set())


def bench_compute(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 4: FLOPs of a training step (counted by `FlopCounterMode`: matmuls, convolutions, attention; not the
    element-wise optimizer update) over the hand-loop step time, divided by the dense matmul FLOP/s this process
    measures between the same steps (see [`measure_training`]; shared with item 1)."""
    measured = ctx.training
    step_seconds = median(measured.loop_seconds)
    achieved = measured.flops_per_step / step_seconds
    peak = median(measured.matmul_flops_per_second)
    cpu_efficiency = (measured.flops_per_step / median(measured.loop_cpu_seconds)) / median(
        measured.matmul_flops_per_cpu_second
    )
    dtype = "bfloat16" if ctx.settings.bf16 else "float32"
    amx_note = ""
    if not ctx.bfloat16_has_hardware:
        amx_note = "; no AMX (amx_bf16) on this CPU: a bfloat16 peak needs it (--bf16 is emulated here)"
    return [
        make_row(
            4,
            f"compute efficiency: training FLOP/s / dense {dtype} matmul FLOP/s",
            achieved / peak,
            "ratio",
            ">= 0.30",
            f"batch {ctx.workload.batch_size}: {measured.flops_per_step / 1e9:.0f} GFLOP/step in {step_seconds:.2f} s "
            f"= {achieved / 1e9:.1f} GFLOP/s; matmul {peak / 1e9:.1f} GFLOP/s; per CPU second {cpu_efficiency:.3f}"
            f"{amx_note}",
            flops_per_step=measured.flops_per_step,
            step_seconds=measured.loop_seconds,
            step_cpu_seconds=measured.loop_cpu_seconds,
            matmul_flops_per_second=measured.matmul_flops_per_second,
            matmul_flops_per_cpu_second=measured.matmul_flops_per_cpu_second,
            cpu_efficiency=cpu_efficiency,
        )
    ]


# --------------------------------------------------------------------------------------------------------------------
# 5. Audio encoder throughput
# --------------------------------------------------------------------------------------------------------------------


def bench_audio_encoder(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 5: seconds of 16 kHz audio the WaveNet encoder of the benchmarked config encodes per second (inference,
    `audio_encoder_batch` clips of `audio_encoder_seconds`)."""
    config = ctx.config.audio_config
    if not isinstance(config, WaveNetConfig) and getattr(config, "model_type", None) != WaveNetConfig.model_type:
        config = WaveNetConfig()
    torch.manual_seed(ctx.settings.seed)
    model = WaveNetModel(config).to(ctx.device).eval()
    batch, seconds = ctx.workload.audio_encoder_batch, ctx.workload.audio_encoder_seconds
    samples = int(seconds * config.sampling_rate)
    input_values = torch.randn(batch, samples, device=ctx.device)
    mask = torch.ones(batch, samples, dtype=torch.long, device=ctx.device)
    forward = ctx.maybe_compile(model)
    with torch.inference_mode(), ctx.autocast():
        times = time_interleaved(
            {"encode": lambda: forward(input_values, attention_mask=mask)},
            repeat=max(ctx.workload.repeat, 5),
            warmup=ctx.workload.warmup,
            device=ctx.device,
        )
    elapsed = median(times["encode"])
    return [
        make_row(
            5,
            f"audio encoder: seconds of audio per second ({batch} x {seconds:g} s, inference)",
            batch * seconds / elapsed,
            "x real time",
            ">= 50",
            f"median {elapsed:.3f} s for {batch * seconds:g} s of audio with {torch.get_num_threads()} torch thread(s)",
            seconds=times["encode"],
        ),
        _frozen_stack_row(ctx),
    ]


def _frozen_stack_row(ctx: BenchmarkContext) -> BenchmarkRow:
    """Item 5, second row: a training step (forward and backward) of the demo's audio encoder (`speech_embedding`
    front-end at 8 kHz, random weights, its stack frozen) on the stack's cached outputs, over the same step on the
    waveforms, which runs the stack: what the frozen-encoder cache saves `scripts/demo.sh` per audio batch."""
    torch.manual_seed(ctx.settings.seed)
    config = WaveNetConfig(
        frontend="speech_embedding", sampling_rate=8000, hidden_size=64, num_stacks=2, layers_per_stack=4
    )
    model = WaveNetModel(config).to(ctx.device).train()
    model.freeze_feature_encoder()
    batch, seconds = ctx.workload.audio_encoder_batch, ctx.workload.audio_encoder_seconds
    input_values = torch.randn(batch, int(seconds * config.sampling_rate), device=ctx.device)
    cached, _ = model.compute_feature_encoder_outputs(input_values)

    def step(**inputs: torch.Tensor) -> None:
        with ctx.autocast():
            loss = model(**inputs).pooler_output.float().square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    times = time_interleaved(
        {"waveforms": lambda: step(input_values=input_values), "cached": lambda: step(feature_encoder_outputs=cached)},
        repeat=max(ctx.workload.repeat, 5),
        warmup=ctx.workload.warmup,
        device=ctx.device,
    )
    waveforms, cached_seconds = median(times["waveforms"]), median(times["cached"])
    return make_row(
        5,
        f"frozen speech stack: training step on its cached outputs / on the waveforms ({batch} x {seconds:g} s)",
        cached_seconds / waveforms,
        "ratio",
        "<= 0.5",
        f"median {cached_seconds:.4f} s against {waveforms:.4f} s (the demo's audio encoder, stack frozen)",
        seconds={name: times[name] for name in ("waveforms", "cached")},
    )


# --------------------------------------------------------------------------------------------------------------------
# 6. Preprocessing vs transformers' stock processors
# --------------------------------------------------------------------------------------------------------------------


def stock_image_processor(fast: bool):
    """The ResNet-style stock processor (as `microsoft/resnet-50`: resize 256, crop 224, ImageNet mean / std): the PIL
    backend, or the torchvision ("fast") backend. `ImportError` when torchvision is missing for `fast=True`."""
    from transformers.utils import is_torchvision_available

    kwargs = {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "image_mean": IMAGENET_MEAN}
    kwargs["image_std"] = IMAGENET_STD
    if not fast:
        from transformers import ConvNextImageProcessorPil

        return ConvNextImageProcessorPil(**kwargs)
    if not is_torchvision_available():
        raise ImportError("torchvision is not installed (transformers' fast image processors need it)")
    from transformers.models.convnext.image_processing_convnext import ConvNextImageProcessor

    return ConvNextImageProcessor(**kwargs)


def bench_preprocessing(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 6: our image path (`MultimodalProcessor(images=...)` with its default image processor) vs the stock
    ResNet-style processors, and `WaveNetFeatureExtractor` vs `Wav2Vec2FeatureExtractor`, on the same inputs.
    Ratios are stock time / our time (> 1: ours is faster; medians over rounds of the ratio within a round); the
    largest difference of the outputs is recorded."""
    from transformers import Wav2Vec2FeatureExtractor

    workload = ctx.workload
    images = [example["image"] for example in ctx.raw_examples]
    count = len(images)
    # Clips of different lengths, so that padding and masks are exercised.
    clips = [
        example["audio"][: max(1, int(len(example["audio"]) * (0.6 + 0.4 * index / max(1, count - 1))))]
        for index, example in enumerate(ctx.raw_examples)
    ]
    ours_image = ctx.processor
    stock = {"PIL": stock_image_processor(fast=False)}
    unavailable = {}
    try:
        stock["torchvision (fast)"] = stock_image_processor(fast=True)
    except ImportError as error:
        unavailable["torchvision (fast)"] = str(error)
    wav2vec2 = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    ours_audio = ctx.processor.feature_extractor
    functions = {
        "ours_image": lambda: ours_image(images=images)["pixel_values"],
        "ours_audio": lambda: ours_audio(clips, sampling_rate=16000, return_tensors="pt"),
        "wav2vec2": lambda: wav2vec2(
            clips, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt"
        ),
    }
    for name, processor in stock.items():
        functions[f"stock {name}"] = lambda processor=processor: processor(images=images, return_tensors="pt")
    times = time_interleaved(functions, max(workload.repeat, 20), workload.warmup)  # milliseconds each: many rounds
    ours_pixels = functions["ours_image"]()
    rows = []
    for name in ("PIL", "torchvision (fast)"):
        label = f"preprocessing images: stock ResNet-style {name} / ours"
        if name in unavailable:
            rows.append(make_row(6, label, None, "ratio", ">= 1.0", f"n/a: {unavailable[name]}"))
            continue
        stock_s, ours_s = median(times[f"stock {name}"]), median(times["ours_image"])
        difference = float((functions[f"stock {name}"]()["pixel_values"] - ours_pixels).abs().max())
        rows.append(
            make_row(
                6,
                label,
                times.ratio(f"stock {name}", "ours_image"),
                "ratio",
                ">= 1.0",
                f"{count} images {workload.image_size[0]}x{workload.image_size[1]}, {len(times['ours_image'])} rounds; "
                f"median s: stock {stock_s:.4f}, ours {ours_s:.4f}; max |difference| {difference:.3g}",
                stock_seconds=times[f"stock {name}"],
                ours_seconds=times["ours_image"],
                cpu_ratio=times.ratio(f"stock {name}", "ours_image", cpu=True),
                max_abs_difference=difference,
            )
        )
    stock_s, ours_s = median(times["wav2vec2"]), median(times["ours_audio"])
    difference = functions["wav2vec2"]()["input_values"] - functions["ours_audio"]()["input_values"]
    difference = float(difference.abs().max())
    rows.append(
        make_row(
            6,
            "preprocessing audio: Wav2Vec2FeatureExtractor / WaveNetFeatureExtractor",
            times.ratio("wav2vec2", "ours_audio"),
            "ratio",
            ">= 1.0",
            f"{count} clips of {0.6 * workload.audio_seconds:g}-{workload.audio_seconds:g} s, {len(times['wav2vec2'])} "
            f"rounds; median s: stock {stock_s:.4f}, ours {ours_s:.4f}; max |difference| {difference:.3g}",
            stock_seconds=times["wav2vec2"],
            ours_seconds=times["ours_audio"],
            cpu_ratio=times.ratio("wav2vec2", "ours_audio", cpu=True),
            max_abs_difference=difference,
        )
    )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# 7. Peak memory
# --------------------------------------------------------------------------------------------------------------------


def bench_memory(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 7: peak memory of one training step (after a warm-up step has allocated the optimizer state) and of one
    inference forward, at `batch_size`."""
    model = ctx.model
    parameters_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024**2
    loop = HandLoop(ctx, steps=2)
    loop.step()  # warm-up: optimizer state, allocator caches
    training = measure_peak_memory(loop.step, ctx.device)
    model.eval()
    loop = None
    gc.collect()
    inputs = {name: tensor for name, tensor in ctx.model_inputs.items() if name != "labels"}
    forward = ctx.maybe_compile(model)

    def infer():
        with torch.inference_mode(), ctx.autocast():
            forward(**inputs)

    infer()
    inference = measure_peak_memory(infer, ctx.device)
    rows = []
    for name, measured in (("training step", training), ("inference forward", inference)):
        rows.append(
            make_row(
                7,
                f"peak memory: {name} (batch {ctx.workload.batch_size})",
                measured["peak_mib"],
                "MiB",
                None,
                f"+{measured['increase_mib']:.0f} MiB over the {measured['peak_mib'] - measured['increase_mib']:.0f} "
                f"MiB before the call; parameters {parameters_mib:.0f} MiB; {measured['method']}",
                **measured,
                parameters_mib=parameters_mib,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# 8. The alternatives a user has: stock one-modality classifiers and scikit-learn on the same task
# --------------------------------------------------------------------------------------------------------------------


ALTERNATIVES_IMAGE_SIZE = 32
"""Item 8 gives the 32x32 digit scans to the ResNets at their own size (as `scripts/train.py --image_size 32`)."""


class _OneModalityCollator:
    """Rows of the digits demo to the inputs of a stock one-modality classifier: the tokenizer's (a missing text is
    an empty one: [CLS] [SEP]) or the image processor's (a missing image is a black one), with `labels`."""

    def __init__(self, processor: MultimodalProcessor, modality: str):
        self.processor = processor
        self.modality = modality

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from PIL import Image

        from hf_multimodal.media_loading import load_image

        if self.modality == "text":
            batch = self.processor.tokenizer(
                [example["text"] or "" for example in examples],
                padding=True,
                truncation=True,
                max_length=self.processor.max_text_length,
                return_tensors="pt",
            )
        else:
            blank = Image.new("RGB", (ALTERNATIVES_IMAGE_SIZE, ALTERNATIVES_IMAGE_SIZE))
            images = [blank if example["image"] is None else load_image(example["image"]) for example in examples]
            batch = self.processor.image_processor([image.convert("RGB") for image in images], return_tensors="pt")
        return {**batch, "labels": torch.tensor([example["label"] for example in examples])}


def _train_and_score(
    ctx: BenchmarkContext, model: torch.nn.Module, collator: Callable, train: Any, test: Any
) -> tuple[float, float]:
    """Train `model` with `Trainer` for `alternatives_steps` steps and return (accuracy on `test`, process CPU
    seconds of `Trainer.train()`, batch decoding and preprocessing included)."""
    from transformers import PrinterCallback, Trainer

    args = _training_arguments(
        ctx,
        ctx.workload.alternatives_steps,
        output_dir=os.path.join(ctx._tmp.name, "alternatives"),
        per_device_eval_batch_size=64,
        learning_rate=1e-3,  # random weights: the benchmark's 1e-5 would leave them where they start
        train_sampling_strategy="random",
        remove_unused_columns=False,  # the collators read the raw columns
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    cpu_start = time.process_time()
    trainer.train()
    cpu_seconds = time.process_time() - cpu_start
    predictions = trainer.predict(test).predictions
    logits = predictions[0] if isinstance(predictions, tuple) else predictions
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(test["label"]))), cpu_seconds


def bench_alternatives(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 8: the project's model beside the alternatives a user has, on the same task in one run: the digits demo
    (`scripts/make_demo_dataset.py`, built from vendored material: `alternatives_train` training examples, scored on
    `alternatives_test` examples of its `test` split). `BertForSequenceClassification` reads the text alone,
    `ResNetForImageClassification` the image alone, both with the sub-configs of the multimodal model (the `tiny`
    ones, hidden size 32 and 2 layers, at every size) and the same `Trainer` settings and steps; the scikit-learn
    MLP of `scripts/baseline_sklearn.py` reads raw features of all three modalities. Each row's value is the test
    accuracy; `cpu_seconds_per_1000` is the process CPU seconds of training (preprocessing included) per 1,000
    examples of the training split."""
    import copy

    import datasets
    from baseline_sklearn import fit_and_score  # scripts/
    from make_demo_dataset import DIGIT_WORDS, VENDORED_AUDIO_DIR, build_demo_dataset  # scripts/
    from train import resnet_image_processor  # scripts/
    from transformers import BertForSequenceClassification, ResNetForImageClassification

    from hf_multimodal import MODALITIES
    from hf_multimodal.data_collator import MultimodalDataCollator

    workload = ctx.workload
    data = build_demo_dataset(
        VENDORED_AUDIO_DIR,
        num_train=workload.alternatives_train,
        num_validation=2,
        num_test=workload.alternatives_test,
        seed=ctx.settings.seed,
    )
    train, test = data["train"], data["test"]
    labels = {"id2label": dict(enumerate(DIGIT_WORDS)), "label2id": {w: i for i, w in enumerate(DIGIT_WORDS)}}
    config = MultimodalConfig(**TINY_CONFIG, **labels)
    processor = MultimodalProcessor(max_text_length=32)
    processor.image_processor = resnet_image_processor(ALTERNATIVES_IMAGE_SIZE)
    text_config, vision_config = copy.deepcopy(config.text_config), copy.deepcopy(config.vision_config)
    for sub_config in (text_config, vision_config):
        sub_config.update(labels)
    torch.manual_seed(ctx.settings.seed)
    neural = {
        f"multimodal model ({config.fusion_type} fusion; text + image + audio)": (
            MultimodalForSequenceClassification(config),
            MultimodalDataCollator(processor, modalities=MODALITIES),
        ),
        "BertForSequenceClassification (text only)": (
            BertForSequenceClassification(text_config),
            _OneModalityCollator(processor, "text"),
        ),
        "ResNetForImageClassification (image only)": (
            ResNetForImageClassification(vision_config),
            _OneModalityCollator(processor, "image"),
        ),
    }
    setting = f"{workload.alternatives_steps} Trainer steps at batch {workload.batch_size}, learning rate 1e-3"
    results = {
        name: (*_train_and_score(ctx, model.to(ctx.device), collator, train, test), setting)
        for name, (model, collator) in neural.items()
    }
    folder = os.path.join(ctx._tmp.name, "alternatives_data")
    bars_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # "Saving the dataset" bars are noise in the benchmark output
    data.save_to_disk(folder)
    if bars_enabled:
        datasets.enable_progress_bars()
    sklearn = fit_and_score(folder, MODALITIES, ["test"], seed=ctx.settings.seed)
    results["scikit-learn MLP on raw features (text + image + audio)"] = (
        sklearn["test"]["accuracy"],
        sklearn["fit_cpu_seconds"],
        (
            "scripts/baseline_sklearn.py: hashed character n-grams, 32x32 grey pixels, log-mel statistics; MLP "
            "256-256 with early stopping"
        ),
    )
    rows = []
    for name, (accuracy, cpu_seconds, how) in results.items():
        per_1000 = 1000 * cpu_seconds / len(train)
        rows.append(
            make_row(
                8,
                f"alternatives: {name}",
                accuracy,
                "accuracy",
                None,
                f"digits demo, {len(train)} training / {len(test)} test examples; {how}; {cpu_seconds:.1f} CPU s "
                f"of training = {per_1000:.2f} CPU s / 1,000 training examples",
                cpu_seconds=cpu_seconds,
                cpu_seconds_per_1000=per_1000,
                num_train=len(train),
                num_test=len(test),
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# 9. torch.compile on the demo model, 10. activation checkpointing per encoder (issue 12, items 5 and 7)
# --------------------------------------------------------------------------------------------------------------------


DEMO_MODEL_CONFIG: dict[str, Any] = {
    # all-MiniLM-L6-v2's shape, random weights (nothing is downloaded); frozen, as scripts/demo.sh freezes it
    "text_config": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "vision_config": {"hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "embedding_size": 32, "layer_type": "basic"},
    "audio_config": {
        "frontend": "log_mel", "sampling_rate": 8000, "hidden_size": 64, "num_stacks": 2, "layers_per_stack": 4
    },
    "fusion_type": "gated",
    "fusion_hidden_size": 128,
    "modality_dropout": 0.5,
}
"""The encoders, head and modality dropout of `scripts/demo.sh` (item 9 at the default size)."""

DEMO_MAX_TEXT_TOKENS, DEMO_MAX_AUDIO_SECONDS, DEMO_IMAGE_SIZE = 32, 2.0, 32
"""`scripts/demo.sh`'s `--max_text_tokens`, `--max_audio_seconds` and `--image_size`."""


def _shape_signature(batch: dict[str, Any]) -> tuple:
    """What a compiled graph is specialised on: the name and shape of every tensor input of a batch."""
    return tuple(sorted((name, tuple(value.shape)) for name, value in batch.items() if torch.is_tensor(value)))


def _count_graphs(
    model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], frozen: Sequence[str]
) -> dict[str, int]:
    """Graphs and graph breaks of `torch.compile(model, backend="eager")` over training forwards of
    `batches` (the `frozen` encoders in eval mode): the graphs dynamo captures do not depend on the backend, and the
    eager backend costs no compilation."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    model.train()
    for modality in frozen:
        model.get_encoder(modality).eval()
    for batch in batches:
        compiled(**batch)
    model.eval()
    graphs = {"graphs": int(counters["stats"]["unique_graphs"]), "graph_breaks": sum(counters["graph_break"].values())}
    torch._dynamo.reset()
    return graphs


def _training_steps(
    model: torch.nn.Module, forward: Callable, batches: Sequence[dict[str, torch.Tensor]], frozen: Sequence[str]
) -> tuple[list[float], list[int]]:
    """Train `model` through `forward` (the model or its compiled form) one step per batch with AdamW; returns the
    seconds of each step and the number of graphs compiled so far after each."""
    from torch._dynamo.utils import counters

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seconds, graphs = [], []
    model.train()
    for modality in frozen:
        model.get_encoder(modality).eval()
    for batch in batches:
        start = time.perf_counter()
        forward(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        graphs.append(int(counters["stats"]["unique_graphs"]))
    model.eval()
    return seconds, graphs


def bench_compile(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 9 (issue 12, item 5): `torch.compile` (inductor, `dynamic=None`: static shapes first, dynamic after a
    shape changes) of the demo model (`DEMO_MODEL_CONFIG`, random weights; the `tiny` sub-configs at the tiny size)
    on digits-demo batches of `batch_size` decoded by `MultimodalDataCollator` as `scripts/train.py` does.

    Rows: the graphs dynamo captures over the training batches with text and audio padded to the longest example vs
    to bucketed lengths (`bucket_multiples`); inference of one batch, eager time / compiled time (steady state, the
    first compiled call's compilation in the note); training over the bucketed batches, eager / compiled median step
    time after the steps that compiled, with the graphs compiled."""
    import datasets
    from make_demo_dataset import VENDORED_AUDIO_DIR, build_demo_dataset  # scripts/

    from hf_multimodal import MODALITIES
    from hf_multimodal.data_collator import MultimodalDataCollator
    from hf_multimodal.processing_multimodal import bucket_multiples, is_missing

    workload = ctx.workload
    described = "tiny model" if workload.name == "tiny" else "demo model"
    num_examples = workload.compile_batches * workload.batch_size
    bars_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    data = build_demo_dataset(VENDORED_AUDIO_DIR, num_train=num_examples, num_validation=2, num_test=2, seed=0)
    if bars_enabled:
        datasets.enable_progress_bars()
    # problem_type is set (as scripts/train.py sets it): transformers' loss would set it on the first call, which
    # would recompile
    model, processor = demo_model_and_processor(ctx)
    rate = processor.feature_extractor.sampling_rate
    multiples = bucket_multiples(DEMO_MAX_TEXT_TOKENS, int(DEMO_MAX_AUDIO_SECONDS * rate))
    # as scripts/train.py, examples without any modality are left out of training
    rows = [row for row in data["train"] if not all(is_missing(row[m]) for m in MODALITIES)]
    padded = {}
    paddings = {"to the longest example": {}, "to bucketed lengths": multiples}
    for name, pad_to_multiple_of in paddings.items():
        collator = MultimodalDataCollator(
            processor, MODALITIES, max_audio_seconds=DEMO_MAX_AUDIO_SECONDS, pad_to_multiple_of=pad_to_multiple_of
        )
        padded[name] = [
            {key: value.to(ctx.device) for key, value in collator(rows[start : start + workload.batch_size]).items()}
            for start in range(0, len(rows), workload.batch_size)
        ]
    shapes = {name: len({_shape_signature(batch) for batch in batches}) for name, batches in padded.items()}
    graphs = {name: _count_graphs(model, batches, ["text"]) for name, batches in padded.items()}
    result = [
        make_row(
            9,
            f"torch.compile ({described}): graphs over {len(padded[name])} training batches, text and audio padded "
            f"{name}",
            float(graphs[name]["graphs"]),
            "graphs",
            None,
            f"{shapes[name]} distinct input shapes; {graphs[name]['graph_breaks']} graph breaks (dynamo, dynamic=None"
            + (f"; pad_to_multiple_of {paddings[name]}" if paddings[name] else "")
            + ")",
            distinct_shapes=shapes[name],
            **graphs[name],
        )
        for name in padded
    ]

    bucketed = padded["to bucketed lengths"]
    inputs = {name: value for name, value in bucketed[0].items() if name != "labels"}
    torch._dynamo.reset()
    compiled = torch.compile(model)

    def infer(forward: Callable) -> Callable[[], Any]:
        def run():
            with torch.inference_mode(), ctx.autocast():
                forward(**inputs)

        return run

    start = time.perf_counter()
    infer(compiled)()
    first_call = time.perf_counter() - start
    times = time_interleaved(
        {"eager": infer(model), "compiled": infer(compiled)}, repeat=workload.repeat, warmup=1, device=ctx.device
    )
    ratio = times.ratio("eager", "compiled")
    result.append(
        make_row(
            9,
            f"torch.compile ({described}): inference batch {workload.batch_size}, eager / compiled time",
            ratio,
            "ratio",
            None,
            f"median s: eager {median(times['eager']):.3f}, compiled {median(times['compiled']):.3f} "
            f"({workload.repeat} interleaved rounds); first compiled call {first_call:.1f} s (compilation); "
            f"CPU-time ratio {times.ratio('eager', 'compiled', cpu=True):.3f}",
            eager_seconds=times["eager"],
            compiled_seconds=times["compiled"],
            first_call_seconds=first_call,
        )
    )

    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    with ctx.autocast():
        compiled_seconds, compiled_graphs = _training_steps(model, torch.compile(model), bucketed, ["text"])
        model.load_state_dict(state)
        eager_seconds, _ = _training_steps(model, model, bucketed, ["text"])
    model.load_state_dict(state)
    torch._dynamo.reset()
    # steps that compiled a graph (the first, and each new shape) are left out of the steady-state medians
    steady = [i for i in range(1, len(compiled_graphs)) if compiled_graphs[i] == compiled_graphs[i - 1]]
    steady_compiled = median([compiled_seconds[i] for i in steady]) if steady else float("nan")
    steady_eager = median([eager_seconds[i] for i in steady]) if steady else float("nan")
    compiling = sum(compiled_seconds) - len(compiled_seconds) * steady_compiled
    result.append(
        make_row(
            9,
            f"torch.compile ({described}): training {len(compiled_seconds)} steps of batch {workload.batch_size}, "
            "eager / compiled step time",
            steady_eager / steady_compiled if steady else None,
            "ratio",
            None,
            f"bucketed batches; median s/step over the {len(steady)} steps that compiled nothing: eager "
            f"{steady_eager:.3f}, compiled {steady_compiled:.3f}; {compiled_graphs[-1]} graphs compiled (about "
            f"{compiling:.0f} s of compilation); whole run: eager {sum(eager_seconds):.1f} s, compiled "
            f"{sum(compiled_seconds):.1f} s",
            eager_step_seconds=eager_seconds,
            compiled_step_seconds=compiled_seconds,
            graphs_after_step=compiled_graphs,
        )
    )
    return result


def bench_checkpointing(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 10 (issue 12, item 7): peak memory and step time of a training step of the benchmark model at
    `batch_size` without and with activation checkpointing of the encoders that support it (text and audio: the
    transformers ResNet does not), `model.activation_checkpointing_enable(modalities=...)`. Each variant takes a
    warm-up step (optimizer state), a step under [`measure_peak_memory`] and `train_steps` timed steps; the value
    is checkpointed peak / plain peak."""
    model = ctx.model
    modalities = [m for m in model.config.modalities if model.get_encoder(m).supports_gradient_checkpointing]
    measured = {}
    loop = HandLoop(ctx, steps=2 * (2 + ctx.workload.train_steps))
    for name in ("plain", "checkpointed"):
        if name == "checkpointed":
            model.activation_checkpointing_enable(modalities=modalities)
        loop.step()
        peak = measure_peak_memory(loop.step, ctx.device)
        seconds = []
        for _ in range(ctx.workload.train_steps):
            start = time.perf_counter()
            loop.step()
            seconds.append(time.perf_counter() - start)
        measured[name] = {**peak, "step_seconds": seconds}
    for modality in modalities:
        model.get_encoder(modality).activation_checkpointing_disable()
    model.eval()
    plain, checkpointed = measured["plain"], measured["checkpointed"]
    time_ratio = median(checkpointed["step_seconds"]) / median(plain["step_seconds"])
    precision = "bf16 autocast" if ctx.settings.bf16 else "fp32"
    return [
        make_row(
            10,
            f"activation checkpointing ({' + '.join(modalities)}): peak memory of a training step, checkpointed / "
            "plain",
            checkpointed["peak_mib"] / plain["peak_mib"],
            "ratio",
            None,
            f"batch {ctx.workload.batch_size}, {precision}; peak {plain['peak_mib']:.0f} -> "
            f"{checkpointed['peak_mib']:.0f} MiB (step's increase {plain['increase_mib']:.0f} -> "
            f"{checkpointed['increase_mib']:.0f} MiB); step time x{time_ratio:.2f} (median s "
            f"{median(plain['step_seconds']):.2f} -> {median(checkpointed['step_seconds']):.2f}); {plain['method']}",
            checkpointed_modalities=modalities,
            step_time_ratio=time_ratio,
            **{f"{name}_{key}": value for name, values in measured.items() for key, value in values.items()},
        )
    ]


# --------------------------------------------------------------------------------------------------------------------
# 11. Data loading: the collator's CPU share, and decoding in DataLoader workers (issue 14, item 5)
# --------------------------------------------------------------------------------------------------------------------


LOADING_BATCH_SIZE = 32
"""Item 11 measures at the demo's training batch size (`scripts/demo.sh --per_device_train_batch_size 32`)."""

LOADING_WORKERS = 2
"""Item 11 compares the training loader with this many worker processes against none."""


def demo_model_and_processor(
    ctx: BenchmarkContext,
) -> tuple[MultimodalForSequenceClassification, MultimodalProcessor]:
    """The demo model (`DEMO_MODEL_CONFIG`, random weights, its text encoder frozen; the `tiny` sub-configs at the
    tiny size) on the run's device, and a processor with `scripts/demo.sh`'s text length, image size and audio rate."""
    from train import resnet_image_processor  # scripts/

    sub_configs = TINY_CONFIG if ctx.workload.name == "tiny" else DEMO_MODEL_CONFIG
    # problem_type set as scripts/train.py sets it (transformers' loss would set it on the first call)
    config = MultimodalConfig(**sub_configs, num_labels=10, problem_type="single_label_classification")
    torch.manual_seed(ctx.settings.seed)
    model = MultimodalForSequenceClassification(config).to(ctx.device)
    model.get_encoder("text").requires_grad_(False)
    processor = MultimodalProcessor(max_text_length=DEMO_MAX_TEXT_TOKENS)
    processor.image_processor = resnet_image_processor(DEMO_IMAGE_SIZE)
    processor.feature_extractor.sampling_rate = config.audio_config.sampling_rate
    return model, processor


def _same_batches(left: Sequence[dict[str, Any]], right: Sequence[dict[str, Any]]) -> bool:
    """Whether two passes over a loader gave equal batches (same keys, equal tensors) in the same order."""
    return len(left) == len(right) and all(
        one.keys() == other.keys()
        and all(torch.equal(one[key], other[key]) if torch.is_tensor(one[key]) else one[key] == other[key] for key in one)
        for one, other in zip(left, right)
    )


def bench_data_loading(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 11 (issue 14, item 5): loading digits-demo training batches of `LOADING_BATCH_SIZE` (`loading_batches`
    of them) with `MultimodalDataCollator` as `scripts/train.py` does, for the demo model
    ([`demo_model_and_processor`]).

    Rows: the CPU time of loading a batch (reading its rows, decoding the PNG and WAV bytes, resampling, the
    processor) over that of the model's forward + backward on the same batch, in interleaved rounds (<= 1: one worker
    keeps up with training, decoding is not the bottleneck); the wall-clock time of one pass over
    `MultimodalTrainer.get_train_dataloader()` with no workers over that with `LOADING_WORKERS` (worker start-up
    included, as every epoch pays it; > 1: the workers load faster), with whether both gave identical batches; and
    the same ratio for a whole training epoch (`MultimodalTrainer.train()`, one epoch over these batches, the two
    settings alternating; >= 1: the workers make the epoch faster)."""
    import datasets
    from make_demo_dataset import VENDORED_AUDIO_DIR, build_demo_dataset  # scripts/
    from transformers import PrinterCallback, set_seed

    from hf_multimodal import MODALITIES
    from hf_multimodal.data_collator import MultimodalDataCollator
    from hf_multimodal.processing_multimodal import is_missing
    from hf_multimodal.trainer import MultimodalTrainer
    from hf_multimodal.training_args import MultimodalTrainingArguments

    workload = ctx.workload
    bars_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    train = build_demo_dataset(
        VENDORED_AUDIO_DIR,
        num_train=workload.loading_batches * LOADING_BATCH_SIZE,
        num_validation=2,
        num_test=2,
        seed=ctx.settings.seed,
    )["train"]
    # as scripts/train.py, examples without any modality are left out of training
    train = train.filter(lambda row: not all(is_missing(row[m]) for m in MODALITIES))
    if bars_enabled:
        datasets.enable_progress_bars()
    model, processor = demo_model_and_processor(ctx)
    collator = MultimodalDataCollator(processor, MODALITIES, max_audio_seconds=DEMO_MAX_AUDIO_SECONDS)
    args = MultimodalTrainingArguments(
        os.path.join(ctx._tmp.name, "loading"),
        per_device_train_batch_size=LOADING_BATCH_SIZE,
        eval_strategy="no",
        load_best_model_at_end=False,
        early_stopping_patience=0,
        num_train_epochs=1,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        report_to="none",
        use_cpu=ctx.device.type == "cpu",
        seed=ctx.settings.seed,
    )
    trainer = MultimodalTrainer(
        model=model, args=args, train_dataset=train, data_collator=collator, frozen_modalities=["text"]
    )
    trainer.remove_callback(PrinterCallback)  # its end-of-training print is noise in the benchmark output
    indices = [
        range(start, min(start + LOADING_BATCH_SIZE, len(train))) for start in range(0, len(train), LOADING_BATCH_SIZE)
    ]

    def load(rows: range) -> dict[str, torch.Tensor]:
        return collator([train[row] for row in rows])

    batches = [{name: value.to(ctx.device) for name, value in load(rows).items()} for rows in indices]

    def forward_backward(batch: dict[str, torch.Tensor]) -> None:
        model.train()
        with ctx.autocast():
            loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        model.zero_grad(set_to_none=True)

    rounds = max(workload.repeat, len(batches))
    times = time_interleaved(
        {"loading": _cycling(load, indices), "forward_backward": _cycling(forward_backward, batches)},
        repeat=rounds,
        warmup=workload.warmup,
        device=ctx.device,
    )

    def with_workers(workers: int, run: Callable[[], Any]) -> Callable[[], Any]:
        def call():
            trainer.args.dataloader_num_workers = workers
            set_seed(ctx.settings.seed)  # the sampler's shuffle, as at the start of a run
            return run()

        return call

    counts = (0, LOADING_WORKERS)
    without, within = (f"{workers} workers" for workers in counts)
    passes = {f"{w} workers": with_workers(w, lambda: list(trainer.get_train_dataloader())) for w in counts}
    identical = _same_batches(passes[without](), passes[within]())  # also the warm-up of both
    loader_times = time_interleaved(passes, repeat=workload.repeat, warmup=0)
    epochs = {f"{w} workers": with_workers(w, trainer.train) for w in counts}
    epoch_times = time_interleaved(epochs, repeat=workload.repeat, warmup=0, device=ctx.device)
    trainer.args.dataloader_num_workers = 0
    model.eval()
    loading, step = median(times.cpu["loading"]), median(times.cpu["forward_backward"])
    described = "tiny model" if workload.name == "tiny" else "demo model"
    return [
        make_row(
            11,
            f"data loading ({described}): CPU time of loading a batch of {LOADING_BATCH_SIZE} / of forward + "
            "backward on it",
            times.ratio("loading", "forward_backward", cpu=True),
            "ratio",
            "<= 1.0",
            f"digits demo, {len(train)} training examples; median CPU s per batch: loading {loading:.3f} (rows, PNG "
            f"and WAV decoding, resampling, processor), forward + backward {step:.3f} ({rounds} interleaved rounds); "
            f"without workers, loading is {loading / (loading + step):.0%} of a step's CPU time",
            loading_cpu_seconds=times.cpu["loading"],
            forward_backward_cpu_seconds=times.cpu["forward_backward"],
            loading_seconds=times["loading"],
            forward_backward_seconds=times["forward_backward"],
        ),
        make_row(
            11,
            f"data loading ({described}): training loader pass, {without} / {within} time",
            loader_times.ratio(without, within),
            "ratio",
            None,
            f"MultimodalTrainer.get_train_dataloader() over {len(indices)} batches of {LOADING_BATCH_SIZE}, worker "
            f"start-up included; median s: {without} {median(loader_times[without]):.3f}, {within} "
            f"{median(loader_times[within]):.3f} ({workload.repeat} interleaved rounds, {os.cpu_count()} CPU cores); "
            f"identical batches with and without workers: {'yes' if identical else '**no**'}",
            identical_batches=identical,
            without_workers_seconds=loader_times[without],
            with_workers_seconds=loader_times[within],
            workers=LOADING_WORKERS,
        ),
        make_row(
            11,
            f"data loading ({described}): training epoch, {without} / {within} time",
            epoch_times.ratio(without, within),
            "ratio",
            ">= 1.0",
            f"MultimodalTrainer.train(), one epoch of {len(indices)} steps of batch {LOADING_BATCH_SIZE}; median s: "
            f"{without} {median(epoch_times[without]):.2f}, {within} {median(epoch_times[within]):.2f} "
            f"({workload.repeat} interleaved rounds; {torch.get_num_threads()} torch threads in the main process, "
            f"{os.cpu_count()} CPU cores)",
            without_workers_seconds=epoch_times[without],
            with_workers_seconds=epoch_times[within],
            workers=LOADING_WORKERS,
        ),
    ]


# --------------------------------------------------------------------------------------------------------------------
# 12. Per-example modality importance in a pipeline call (issue 13)
# --------------------------------------------------------------------------------------------------------------------

IMPORTANCE_TARGET = 1.3
"""A pipeline call with `return_modality_importance=True` costs at most this many times the call without it."""


def bench_importance(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 12: `pipeline("multimodal-classification")` on the `batch_size` raw examples with
    `return_modality_importance=True` vs the same call without it, for every fusion type (the encoders of the run's
    model shared, each head freshly initialised; the two calls alternate, medians over rounds of the ratio within a
    round). The importance runs the encoders once and the fusion head and classifier again per left-out modality."""
    inputs = _pipeline_inputs(ctx.raw_examples)
    call = {"batch_size": ctx.workload.batch_size, "top_k": 1}
    rows = []
    for fusion in FUSION_TYPES:
        pipe = MultimodalClassificationPipeline(
            model=model_sharing_encoders(ctx.model, fusion), processor=ctx.processor, device=ctx.device
        )
        functions = {
            "plain": lambda pipe=pipe: pipe(inputs, **call),
            "importance": lambda pipe=pipe: pipe(inputs, return_modality_importance=True, **call),
        }
        with ctx.autocast():
            times = time_interleaved(functions, ctx.workload.repeat, ctx.workload.warmup, ctx.device)
        rows.append(
            make_row(
                12,
                f"modality importance {fusion}: pipeline call with / without",
                times.ratio("importance", "plain"),
                "ratio",
                f"<= {IMPORTANCE_TARGET}",
                f"batch {ctx.workload.batch_size}; median s: with {median(times['importance']):.3f}, without "
                f"{median(times['plain']):.3f}; CPU-time ratio {times.ratio('importance', 'plain', cpu=True):.3f}",
                importance_seconds=times["importance"],
                plain_seconds=times["plain"],
                cpu_ratio=times.ratio("importance", "plain", cpu=True),
            )
        )
    return rows


BFLOAT16_TARGET = 0.5
"""Upper bound of (bfloat16 / float32 CPU time) of a pipeline call, where the hardware has bfloat16 units."""


def bench_bfloat16(ctx: BenchmarkContext) -> list[BenchmarkRow]:
    """Item 13: `pipeline("multimodal-classification", dtype=torch.bfloat16)` vs the same pipeline in float32, on the
    `batch_size` raw examples in one call each (the two alternate, medians over rounds of the CPU-time ratio within a
    round), with how far apart their scores are. The target (<= 0.5) holds where bfloat16 has hardware: a GPU, or a
    CPU with AMX (`amx_bf16`); elsewhere bfloat16 is emulated and the row has no target."""
    from transformers import pipeline

    inputs = _pipeline_inputs(ctx.raw_examples)
    pipes = {
        dtype: pipeline("multimodal-classification", model=ctx.model_folder, device=ctx.device, dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }
    call = {"batch_size": ctx.workload.batch_size, "top_k": None}
    outputs = {dtype: pipe(inputs, **call) for dtype, pipe in pipes.items()}  # also the warm-up at this shape
    scores = {
        dtype: np.array([[entry["score"] for entry in sorted(row, key=lambda e: e["label"])] for row in rows])
        for dtype, rows in outputs.items()
    }
    same_top = np.mean(scores[torch.float32].argmax(1) == scores[torch.bfloat16].argmax(1))
    largest_difference = float(np.abs(scores[torch.float32] - scores[torch.bfloat16]).max())
    functions = {str(dtype): (lambda pipe=pipe: pipe(inputs, **call)) for dtype, pipe in pipes.items()}
    times = time_interleaved(functions, ctx.workload.repeat, 0, ctx.device)
    hardware = ctx.bfloat16_has_hardware
    note = (
        f"batch {ctx.workload.batch_size}; median s: bfloat16 {median(times['torch.bfloat16']):.3f}, float32 "
        f"{median(times['torch.float32']):.3f} (wall-time ratio "
        f"{times.ratio('torch.bfloat16', 'torch.float32'):.3f}); "
        f"same top label for {same_top:.0%} of the examples, scores at most {largest_difference:.4f} apart"
    )
    if not hardware:
        note += "; no AMX (amx_bf16) on this CPU: bfloat16 is emulated, so no target"
    return [
        make_row(
            13,
            "bfloat16 inference: pipeline CPU time, bfloat16 / float32",
            times.ratio("torch.bfloat16", "torch.float32", cpu=True),
            "ratio",
            f"<= {BFLOAT16_TARGET}" if hardware else None,
            note,
            bfloat16_seconds=times["torch.bfloat16"],
            float32_seconds=times["torch.float32"],
            bfloat16_cpu_seconds=times.cpu["torch.bfloat16"],
            float32_cpu_seconds=times.cpu["torch.float32"],
            same_top_label=float(same_top),
            largest_score_difference=largest_difference,
        )
    ]


# --------------------------------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------------------------------


BENCHMARKS: dict[str, Callable[[BenchmarkContext], list[BenchmarkRow]]] = {
    "training": bench_training,
    "inference": bench_inference,
    "fusion": bench_fusion,
    "compute": bench_compute,
    "audio": bench_audio_encoder,
    "preprocessing": bench_preprocessing,
    "memory": bench_memory,
    "alternatives": bench_alternatives,
    "compile": bench_compile,
    "checkpointing": bench_checkpointing,
    "data_loading": bench_data_loading,
    "importance": bench_importance,
    "bfloat16": bench_bfloat16,
}
RUN_ORDER: tuple[str, ...] = (
    "audio",
    "preprocessing",
    "fusion",
    "importance",
    "inference",
    "bfloat16",
    "training",
    "compute",
    "memory",
    "alternatives",
    "data_loading",
    "checkpointing",
    "compile",
)
"""Cheap measurements first; `training` and `compute` share one measurement ([`measure_training`])."""


def machine_info(settings: BenchmarkSettings) -> dict[str, Any]:
    """Date, machine, versions and settings, recorded with every report."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    memory_gib = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} CPU cores, {memory_gib} GiB RAM",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if settings.device == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "settings": {**asdict(settings), "workload": asdict(WORKLOADS[settings.size])},
    }
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_before"] = [round(value, 2) for value in os.getloadavg()]
    return info


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()


def run_benchmarks(settings: BenchmarkSettings, log: Callable[[str], None] | None = print) -> BenchmarkReport:
    """Run the selected measurements (all by default) and return their rows with the run's metadata."""
    default_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    meta = machine_info(settings)
    ctx = BenchmarkContext(settings)
    selected = settings.only or [name for name in BENCHMARK_NAMES if name not in OPT_IN_BENCHMARKS]
    rows: list[BenchmarkRow] = []
    seconds: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        with _quiet_transformers():
            for name in RUN_ORDER:
                if name not in selected:
                    continue
                began = time.perf_counter()
                rows += BENCHMARKS[name](ctx)
                seconds[name] = round(time.perf_counter() - began, 1)
                if log is not None:
                    log(f"[benchmark] {name}: {seconds[name]} s")
    finally:
        ctx.close()
        torch.set_num_threads(default_threads)
    meta["seconds"] = {**seconds, "total": round(time.perf_counter() - start, 1)}
    # CPU seconds of all threads (with 1 thread: the work of the run, whatever else loads the machine)
    meta["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    with contextlib.suppress(OSError, AttributeError):
        meta["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    rows.sort(key=lambda row: row.item)
    return BenchmarkReport(rows=rows, meta=meta)


def _format_value(row: BenchmarkRow) -> str:
    if row.value is None:
        return "n/a"
    if row.unit == "MiB":
        return f"{row.value:.0f} MiB"
    if row.unit == "x real time":
        return f"{row.value:.0f}x"
    if row.unit == "share":
        return f"{100 * row.value:.0f}%"
    return f"{row.value:.3f}"


def _load_warning(meta: dict[str, Any]) -> list[str]:
    """A warning (and a blank line) when the 1-minute load average exceeded 0.75 per core during the run."""
    loads = [meta[key][0] for key in ("load_average_before", "load_average_after") if meta.get(key)]
    if not loads or not meta.get("cpu_count") or max(loads) <= 0.75 * meta["cpu_count"]:
        return []
    warning = (
        f"**Warning: other processes loaded the machine (1-minute load average up to {max(loads)} on "
        f"{meta['cpu_count']} cores): timings are noisy; rerun when it is idle (or compare with --threads 1).**"
    )
    return [warning, ""]


def format_table(report: BenchmarkReport) -> str:
    """The results as a Markdown table, preceded by the date, machine and load averages."""
    meta = report.meta
    lines = [
        f"Measured {meta['date']} on {meta['machine']} ({meta['torch_threads']} torch threads"
        + (f", GPU {meta['gpu']}" if meta.get("gpu") else "")
        + f"); size {meta['settings']['size']}, device {meta['settings']['device']}"
        + (", bf16" if meta["settings"]["bf16"] else "")
        + (", torch.compile" if meta["settings"]["compile"] else "")
        + f"; load average before {meta.get('load_average_before')}, after {meta.get('load_average_after')}; "
        f"{meta['seconds']['total']} s in all, {meta.get('cpu_seconds')} s of CPU time.",
        "",
        *_load_warning(meta),
        "| # | measurement | value | target | met | details |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        note = row.note.replace("|", "\\|")  # e.g. "max |difference|": a bare "|" would split the cell
        lines.append(f"| {row.item} | {row.name} | {_format_value(row)} | {row.target or '-'} | {met} | {note} |")
    return "\n".join(lines)


def plot_report(report: BenchmarkReport, path: str | os.PathLike) -> None:
    """A PNG chart: every targeted value as a multiple of its target (right of 1 = met), and peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targeted = [row for row in report.rows if row.target is not None and row.value is not None]
    memory = [row for row in report.rows if row.unit == "MiB" and row.value is not None]
    figure, axes = plt.subplots(
        1, 2, figsize=(14, 0.45 * max(len(targeted), 4) + 1.5), gridspec_kw={"width_ratios": [3, 1]}
    )
    scores = []
    for row in targeted:
        operator, threshold = row.target.split()
        scores.append(row.value / float(threshold) if operator == ">=" else float(threshold) / row.value)
    labels = [f"{row.item}. {row.name} = {_format_value(row)} ({row.target})" for row in targeted]
    positions = np.arange(len(targeted))
    axes[0].barh(positions, scores, color=["tab:green" if row.met else "tab:red" for row in targeted])
    axes[0].axvline(1.0, color="black", linestyle="--", linewidth=1)
    axes[0].set_yticks(positions, labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xscale("log")
    axes[0].set_xlabel("value relative to target (> 1: target met; log scale)")
    axes[0].set_title("Targets")
    axes[1].bar(range(len(memory)), [row.value for row in memory], color="tab:blue")
    axes[1].set_xticks(range(len(memory)), [row.name.split(": ", 1)[-1] for row in memory], fontsize=8, rotation=20)
    axes[1].set_ylabel("MiB")
    axes[1].set_title("Peak memory")
    meta = report.meta
    figure.suptitle(
        f"hf_multimodal benchmark, size {meta['settings']['size']} on {meta['settings']['device']} - {meta['date']}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(report: BenchmarkReport, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `benchmark.json`, `benchmark.md` (the table) and `benchmark.png` into `output_dir`; returns the paths
    by kind ("json", "md", "png")."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"benchmark.{kind}" for kind in ("json", "md", "png")}
    payload = {"meta": report.meta, "rows": [asdict(row) for row in report.rows]}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["md"].write_text(format_table(report) + "\n")
    plot_report(report, paths["png"])
    return paths


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchmarkSettings, str]:
    """Command-line options of `scripts/benchmark.py`."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Benchmark hf_multimodal: ratios of code paths timed side by side in one run (see README).",
    )
    parser.add_argument("--size", choices=sorted(WORKLOADS), default="default", help="workload (default: default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forwards and training")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (Trainer: torch_compile)")
    parser.add_argument("--output-dir", default="benchmark_results", help="where benchmark.json/.md/.png go")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARK_NAMES,
        metavar="NAME",
        help=f"run only these measurements: {', '.join(BENCHMARK_NAMES)} (the default runs all but "
        f"{' and '.join(OPT_IN_BENCHMARKS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, one per core); 1 avoids OpenMP stalls on a machine shared with other jobs",
    )
    args = parser.parse_args(argv)
    settings = BenchmarkSettings(
        size=args.size,
        device=args.device,
        bf16=args.bf16,
        compile=args.compile,
        only=args.only,
        seed=args.seed,
        threads=args.threads,
    )
    return settings, args.output_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line: print the table, write JSON, Markdown and PNG."""
    try:
        settings, output_dir = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = run_benchmarks(settings)
    print(format_table(report))
    for kind, path in write_report(report, output_dir).items():
        print(f"wrote {kind}: {path}")
    return 0


__all__ = [
    "BENCHMARK_NAMES",
    "OPT_IN_BENCHMARKS",
    "WORKLOADS",
    "BenchmarkContext",
    "BenchmarkReport",
    "BenchmarkRow",
    "BenchmarkSettings",
    "Timings",
    "Workload",
    "check_target",
    "cpu_has_amx_bf16",
    "format_table",
    "main",
    "measure_peak_memory",
    "run_benchmarks",
    "time_interleaved",
    "write_report",
]


if __name__ == "__main__":
    sys.exit(main())
