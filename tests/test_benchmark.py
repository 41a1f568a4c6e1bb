"""scripts/benchmark.py: a smoke run at the tiny size (table, JSON, PNG) and the
measuring primitives. No timed assertions: speed targets live in the benchmark's own output."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_model

from hf_multimodal import FUSION_TYPES, MultimodalConfig
from benchmark import (
    BENCHMARK_NAMES,
    OPT_IN_BENCHMARKS,
    BenchmarkSettings,
    Timings,
    check_target,
    cpu_has_amx_bf16,
    main,
    measure_peak_memory,
    model_sharing_encoders,
    parse_args,
    run_benchmarks,
    time_interleaved,
)

pytestmark = pytest.mark.slow  # benchmark smoke runs


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The whole benchmark at the tiny size through the command-line entry point."""
    output_dir = tmp_path_factory.mktemp("benchmark")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["--size", "tiny", "--output-dir", str(output_dir)])
    return status, printed.getvalue(), output_dir


def test_smoke_run_prints_the_table(smoke_run):
    status, printed, _ = smoke_run
    assert status == 0
    assert "| # | measurement | value | target | met | details |" in printed
    for item in (*range(1, 9), 11, 12, 13):
        assert f"\n| {item} | " in printed, f"item {item} missing from the table"
    assert "load average before" in printed and "CPU cores" in printed


def test_smoke_run_writes_json_with_every_measurement(smoke_run):
    _, _, output_dir = smoke_run
    report = json.loads((output_dir / "benchmark.json").read_text())
    assert {"date", "machine", "torch", "transformers", "settings", "seconds", "load_average_before"} <= set(
        report["meta"]
    )
    assert report["meta"]["settings"]["size"] == "tiny"
    rows = report["rows"]
    assert {row["item"] for row in rows} == set(range(1, 9)) | {11, 12, 13}  # 9 and 10 are opt-in
    for row in rows:
        assert {"item", "name", "value", "unit", "target", "met", "note", "extra"} <= set(row)
        if row["value"] is None:
            assert row["note"].startswith("n/a:"), row  # not measurable here, and says why
            continue
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert row["met"] == check_target(row["value"], row["target"])
    fusion_rows = [row for row in rows if row["item"] == 3]
    assert len(fusion_rows) == len(FUSION_TYPES)
    targets = {row["name"].split()[2].rstrip(":"): row["target"] for row in fusion_rows}
    assert targets["concat"] == targets["weighted_sum"] == targets["gated"] == "<= 1.05"
    assert targets["transformer"] == "<= 1.2"
    training = next(row for row in rows if row["item"] == 1)
    assert len(training["extra"]["trainer_step_seconds"]) == len(training["extra"]["loop_step_seconds"]) >= 2
    workload = report["meta"]["settings"]["workload"]
    single = next(row for row in rows if row["name"].startswith("inference batch 1: pipeline"))
    rounds = workload["pipeline_examples"] * workload["repeat"]  # one example per timed call, interleaved
    assert len(single["extra"]["pipeline_seconds"]) == len(single["extra"]["by_hand_seconds"]) == rounds
    assert single["extra"]["ratio_of_medians"] > 0 and single["extra"]["cpu_ratio"] > 0
    compute = next(row for row in rows if row["item"] == 4)
    assert compute["extra"]["flops_per_step"] > 0
    assert ("no AMX (amx_bf16)" in compute["note"]) == (not cpu_has_amx_bf16())  # the bf16 peak is not reachable
    assert {row["unit"] for row in rows if row["item"] == 7} == {"MiB"}
    importance = [row for row in rows if row["item"] == 12]  # a pipeline call with / without importance, per head
    assert [row["name"].split()[2].rstrip(":") for row in importance] == list(FUSION_TYPES)
    for row in importance:
        assert row["target"] == "<= 1.3" and len(row["extra"]["importance_seconds"]) == workload["repeat"]


def test_smoke_run_compares_the_alternatives_on_the_demo_task(smoke_run):
    """Item 8: the multimodal model, BERT on the text, ResNet on the image and scikit-learn, each with a finite
    accuracy and CPU seconds of training per 1,000 training examples, on the same demo examples."""
    _, _, output_dir = smoke_run
    report = json.loads((output_dir / "benchmark.json").read_text())
    rows = [row for row in report["rows"] if row["item"] == 8]
    names = [row["name"] for row in rows]
    alternatives = ("multimodal model", "BertForSequence", "ResNetForImageClassification", "scikit-learn")
    for alternative in alternatives:
        assert sum(alternative in name for name in names) == 1, (alternative, names)
    workload = report["meta"]["settings"]["workload"]
    for row in rows:
        assert row["unit"] == "accuracy" and 0.0 <= row["value"] <= 1.0, row
        extra = row["extra"]
        assert extra["num_train"] == workload["alternatives_train"]
        assert extra["num_test"] == workload["alternatives_test"]
        assert math.isfinite(extra["cpu_seconds"]) and extra["cpu_seconds"] >= 0, row
        assert extra["cpu_seconds_per_1000"] == pytest.approx(1000 * extra["cpu_seconds"] / extra["num_train"])
        assert "CPU s / 1,000 training examples" in row["note"]
    trained = [row for row in rows if "scikit-learn" not in row["name"]]  # Trainer runs: measurable CPU time
    assert all(row["extra"]["cpu_seconds"] > 0 for row in trained)


def test_smoke_run_compares_bfloat16_with_float32_inference(smoke_run):
    """Item 13: a pipeline call in bfloat16 against the same call in float32, with a target only where bfloat16 has
    hardware (AMX here; emulated elsewhere), and how far apart the two dtypes' scores are."""
    _, _, output_dir = smoke_run
    report = json.loads((output_dir / "benchmark.json").read_text())
    (row,) = [row for row in report["rows"] if row["item"] == 13]
    repeat = report["meta"]["settings"]["workload"]["repeat"]
    assert len(row["extra"]["bfloat16_cpu_seconds"]) == len(row["extra"]["float32_cpu_seconds"]) == repeat
    assert row["target"] == ("<= 0.5" if cpu_has_amx_bf16() else None)
    assert ("bfloat16 is emulated" in row["note"]) == (not cpu_has_amx_bf16())
    assert 0.0 <= row["extra"]["same_top_label"] <= 1.0 and 0.0 <= row["extra"]["largest_score_difference"] < 1.0


def test_smoke_run_measures_data_loading_with_and_without_workers(smoke_run):
    """Item 11: the CPU time of loading demo batches of 32 against the model's forward + backward on them; the
    training loader's pass and a training epoch with 0 and with 2 worker processes, which give identical batches."""
    _, _, output_dir = smoke_run
    report = json.loads((output_dir / "benchmark.json").read_text())
    share, loader, epoch = [row for row in report["rows"] if row["item"] == 11]
    repeat = report["meta"]["settings"]["workload"]["repeat"]
    assert share["unit"] == "ratio" and share["target"] == "<= 1.0"
    assert len(share["extra"]["loading_cpu_seconds"]) == len(share["extra"]["forward_backward_cpu_seconds"]) == repeat
    assert loader["extra"]["identical_batches"] is True
    assert "identical batches with and without workers: yes" in loader["note"]
    assert epoch["target"] == ">= 1.0" and "training epoch" in epoch["name"]
    for row in (loader, epoch):
        assert row["extra"]["workers"] == 2
        assert len(row["extra"]["without_workers_seconds"]) == len(row["extra"]["with_workers_seconds"]) == repeat


def test_smoke_run_writes_png_and_markdown(smoke_run):
    _, printed, output_dir = smoke_run
    png = (output_dir / "benchmark.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    table = (output_dir / "benchmark.md").read_text()
    assert table.strip() in printed


def test_script_is_a_thin_cli(capsys):
    """The script's options, including the GPU ones, parse; invalid choices are refused by argparse (that the script
    itself answers --help is tests/test_readme.py's check)."""
    with pytest.raises(SystemExit) as exit:
        parse_args(["--help"])
    assert exit.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--size", "--device", "--bf16", "--compile", "--output-dir", "--only", "--threads"):
        assert option in shown
    with pytest.raises(SystemExit) as exit:
        parse_args(["--only", "nonsense"])
    assert exit.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_settings_refuse_bad_values_with_the_fix():
    with pytest.raises(ValueError, match="size must be one of"):
        BenchmarkSettings(size="huge")
    with pytest.raises(ValueError, match="choose from"):
        BenchmarkSettings(only=("training", "speed"))
    for threads in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            BenchmarkSettings(threads=threads)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            BenchmarkSettings(device="cuda")
    assert BenchmarkSettings(only=("memory", "training")).only == ("training", "memory")  # issue order
    assert set(BENCHMARK_NAMES) == {
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
    }
    assert BenchmarkSettings(only=("alternatives",)).only == ("alternatives",)
    assert set(OPT_IN_BENCHMARKS) == {"compile", "checkpointing"}  # run only when named (the smoke run leaves them)


def test_threads_option_applies_to_the_run_and_is_restored():
    before = torch.get_num_threads()
    report = run_benchmarks(BenchmarkSettings(size="tiny", only=("audio",), threads=1), log=None)
    assert report.meta["torch_threads"] == 1 and report.meta["settings"]["threads"] == 1
    assert "with 1 torch thread(s)" in report.rows[0].note
    stack = report.rows[1]  # the frozen speech stack's training step, cached over computed
    assert stack.item == 5 and stack.unit == "ratio" and 0 < stack.value < 1
    assert len(stack.extra["seconds"]["cached"]) == len(stack.extra["seconds"]["waveforms"]) >= 5
    assert torch.get_num_threads() == before


def test_checkpointing_section_compares_peak_memory_and_step_time():
    """Item 10 at the tiny size: the encoders that support checkpointing (text, audio), peaks and step times of both
    variants, and the model left without checkpointing."""
    report = run_benchmarks(BenchmarkSettings(size="tiny", only=("checkpointing",), threads=1), log=None)
    (row,) = report.rows
    assert row.item == 10 and row.unit == "ratio" and row.value > 0
    assert row.extra["checkpointed_modalities"] == ["text", "audio"]
    steps = report.meta["settings"]["workload"]["train_steps"]
    assert len(row.extra["plain_step_seconds"]) == len(row.extra["checkpointed_step_seconds"]) == steps
    assert row.extra["plain_peak_mib"] > 0 and "step time x" in row.note and "fp32" in row.note


def test_check_target():
    assert check_target(0.95, ">= 0.95") and not check_target(0.94, ">= 0.95")
    assert check_target(1.2, "<= 1.2") and not check_target(1.21, "<= 1.2")
    assert check_target(None, ">= 1") is None and check_target(3.0, None) is None
    with pytest.raises(ValueError, match="target must look like"):
        check_target(1.0, "== 1")


def test_time_interleaved_rotates_the_order_and_counts_calls():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rotated rounds
    assert len(times["a"]) == len(times.cpu["b"]) == 3 and all(t >= 0 for t in times["a"])
    with pytest.raises(ValueError, match="repeat"):
        time_interleaved({"a": lambda: None}, repeat=0)


def test_timings_ratio_pairs_calls_of_the_same_round():
    """A load burst slowing one round must not decide the ratio: the value pairs calls timed in the same round."""
    times = Timings(["a", "b"])
    times["a"] += [1.0, 10.0, 10.0]  # round 2 and 3 of a, round 3 of b ran while another job held the cores
    times["b"] += [2.0, 2.0, 20.0]
    times.cpu["a"] += [1.0, 1.0, 1.0]
    times.cpu["b"] += [4.0, 4.0, 4.0]
    assert times.ratio("a", "b") == 0.5  # rounds: 0.5, 5, 0.5
    assert times.ratio_of_medians("a", "b") == 5.0
    assert times.ratio("a", "b", cpu=True) == 0.25


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak CPU memory is read from /proc")
def test_measure_peak_memory_sees_a_temporary_allocation():
    def allocate():
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched, then freed
        return float(block[-1])

    measured = measure_peak_memory(allocate, torch.device("cpu"))
    assert measured["increase_mib"] >= 60
    assert measured["peak_mib"] >= measured["increase_mib"]


def test_model_sharing_encoders_reuses_the_encoder_modules():
    base = tiny_model(fusion_type="gated")
    other = model_sharing_encoders(base, "transformer")
    assert other.config.fusion_type == "transformer" and isinstance(other.config, MultimodalConfig)
    for attribute in ("text_model", "vision_model", "audio_model"):
        assert getattr(other.multimodal, attribute) is getattr(base.multimodal, attribute)
    assert not any(parameter.is_meta for parameter in other.parameters())
    assert all(torch.isfinite(parameter).all() for parameter in other.parameters())
    logits = other(input_ids=torch.tensor([[101, 2000, 102]]), input_values=torch.randn(1, 1600)).logits
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()
