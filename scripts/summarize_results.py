#!/usr/bin/env python
"""Summarise the runs of scripts/demo_results.sh as the Markdown tables of the README's Results.

    python scripts/summarize_results.py outputs/results > outputs/results/results.md

Reads each run's metrics.json (test metrics, ablation, the test_unseen_speaker split, train seconds), the
modality-accuracy and scikit-learn JSON files, and states the machine the numbers come from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from hf_multimodal import FUSION_TYPES
from hf_multimodal.metrics import retrieval_recalls


UNSEEN = "test_unseen_speaker"


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def metrics(folder: Path) -> dict[str, Any] | None:
    return load(folder / "metrics.json")


def minutes(run: dict[str, Any]) -> str:
    return f"{run['hyperparameters']['train_seconds'] / 60:.1f}"


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPU cores, one torch thread per run (two runs side by side); Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; summarised "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def classification(root: Path) -> list[str]:
    lines = [
        "| run | fusion | test accuracy | test macro F1 | without text | without image | without audio | "
        "unseen speaker | train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [*FUSION_TYPES, "gated_no_dropout", "text_image_gated", "only_text", "only_image", "only_audio"]:
        run = metrics(root / "classify" / name)
        if run is None:
            continue
        ablation = [run["ablation"].get(f"without_{m}", {}).get("accuracy") for m in ("text", "image", "audio")]
        fusion = run["fusion_type"] if len(run["modalities"]) > 1 else "-"
        lines.append(
            f"| {name} | {fusion} | {cell(run['test']['accuracy'])} | {cell(run['test']['f1'])} | "
            + " | ".join(cell(value) for value in ablation)
            + f" | {cell(run['extra_tests'][UNSEEN]['accuracy'])} | {minutes(run)} |"
        )
    sklearn = load(root / "classify" / "sklearn.json")
    if sklearn:
        lines.append(
            f"| scikit-learn MLP on raw features | - | {cell(sklearn['test']['accuracy'])} | {cell(sklearn['test']['f1'])} "
            f"| - | - | - | {cell(sklearn[UNSEEN]['accuracy'])} | {sklearn['fit_cpu_seconds'] / 60:.1f} (CPU) |"
        )
    if len(lines) == 2:  # the header alone: no run of the classification lane yet
        return []
    seeds = [metrics(root / "classify" / name) for name in ("gated", "gated_seed1", "gated_seed2")]
    if all(seeds):
        lines += [
            "",
            "Spread of the demo's default (gated) over 3 seeds (seed and data order): test accuracy "
            f"{spread([run['test']['accuracy'] for run in seeds])}, unseen speaker "
            f"{spread([run['extra_tests'][UNSEEN]['accuracy'] for run in seeds])}, without text "
            f"{spread([run['ablation']['without_text']['accuracy'] for run in seeds])}, without image "
            f"{spread([run['ablation']['without_image']['accuracy'] for run in seeds])}, without audio "
            f"{spread([run['ablation']['without_audio']['accuracy'] for run in seeds])} (mean, min-max).",
        ]
    return lines


def modality_accuracy(root: Path) -> list[str]:
    results = load(root / "classify" / "gated_modality_accuracy.json")
    if not results:
        return []
    lines = [
        "| split | modality alone, clean inputs | accuracy | examples | per label |",
        "|---|---|---|---|---|",
    ]
    for split, by_modality in results.items():
        for modality, scores in by_modality.items():
            per_label = ", ".join(f"{label} {value:.2f}" for label, value in scores["per_label"].items())
            lines.append(f"| {split} | {modality} | {cell(scores['accuracy'])} | {scores['num_examples']} | {per_label} |")
    return lines


def modality_importance(root: Path) -> list[str]:
    """Per-example importance (scripts/modality_importance.py) beside the ablation, for every head that has it."""
    lines = []
    for path in sorted((root / "classify").glob("*_modality_importance.json")):
        report = load(path)
        rows = report["modalities"]
        by_importance = max(rows, key=lambda m: rows[m]["mean_importance"])
        by_ablation = max(rows, key=lambda m: rows[m]["ablation_accuracy_drop"])
        values = "; ".join(
            f"{m} {cell(r['mean_importance'])} / {cell(r['ablation_accuracy_drop'])}" for m, r in rows.items()
        )
        agree = "yes" if by_importance == by_ablation else f"**no** ({by_importance} vs {by_ablation})"
        weighted = {m: r["mean_fusion_weight"] for m, r in rows.items() if r.get("mean_fusion_weight") is not None}
        by_weight = "-"
        if weighted:  # the second view, for heads that weigh the modalities
            first = max(weighted, key=weighted.get)
            by_weight = ", ".join(f"{m} {cell(w)}" for m, w in weighted.items()) + (
                " (same first)" if first == by_ablation else f" (**{first}** first)")
        run = path.name.removesuffix("_modality_importance.json")
        pipeline_cost = report.get("pipeline_cost_ratio")  # reports written before it was measured lack it
        cost = f"{report['cost_ratio']:.2f}" + (f" ({pipeline_cost:.2f})" if pipeline_cost is not None else "")
        lines.append(f"| {run} | {values} | {agree} | {by_weight} | {cost} |")
    if not lines:
        return []
    header = [
        "| run | per modality: mean importance / accuracy drop without it | same modality first | mean fusion weight "
        "| CPU cost vs forward (pipeline call) |",
        "|---|---|---|---|---|",
    ]
    return header + lines


def alignment(root: Path) -> list[str]:
    run = metrics(root / "align" / "pairs")
    if run is None:
        return []
    lines = [
        f"Trained {minutes(run)} min. Retrieval at the digit level (a query is found at k when one of its k nearest "
        "items of the other modality shows its digit); query bank: each item's score less its mean similarity to "
        "training examples of the query's modality; zero-shot: each item against the ten digit names as text.",
        "",
        "| evaluation | test: recall@1 | test: recall@5 | unseen speaker: recall@1 | unseen speaker: recall@5 |",
        "|---|---|---|---|---|",
    ]
    seen, unseen = run["test"], run["extra_tests"][UNSEEN]
    unseen_recalls = {name: recalls for name, *recalls in retrieval_recalls(unseen)}
    for name, *recalls in retrieval_recalls(seen):
        cells = " | ".join(cell(value) for value in (*recalls, *unseen_recalls[name]))
        lines.append(f"| {name.replace('_to_', ' -> ')} | {cells} |")
    for modality in seen.get("zero_shot", {}):
        lines.append(
            f"| zero-shot {modality} (accuracy) | {cell(seen['zero_shot'][modality]['accuracy'])} | | "
            f"{cell(unseen['zero_shot'][modality]['accuracy'])} | |"
        )
    return lines


def relations(root: Path) -> list[str]:
    lines = [
        "| fusion | from scratch: test | from scratch: unseen speaker | aligned first: test | aligned first: "
        "unseen speaker | train min (scratch / aligned) |",
        "|---|---|---|---|---|---|",
    ]
    for head in FUSION_TYPES:
        scratch, aligned = metrics(root / "match" / f"scratch_{head}"), metrics(root / "match" / f"aligned_{head}")
        if scratch is None and aligned is None:
            continue
        cells = []
        for run in (scratch, aligned):
            cells += [cell(run["test"]["accuracy"]), cell(run["extra_tests"][UNSEEN]["accuracy"])] if run else ["-", "-"]
        times = " / ".join(minutes(run) if run else "-" for run in (scratch, aligned))
        lines.append(f"| {head} | " + " | ".join(cells) + f" | {times} |")
    others = [("gated, modality dropout 0.5", "scratch_gated_dropout"), ("image only", "only_image"),
              ("audio only", "only_audio")]
    for label, name in others:
        run = metrics(root / "match" / name)
        if run:
            lines.append(
                f"| {label} | {cell(run['test']['accuracy'])} | {cell(run['extra_tests'][UNSEEN]['accuracy'])} | - | - "
                f"| {minutes(run)} |"
            )
    sklearn = load(root / "match" / "sklearn.json")
    if sklearn:
        lines.append(
            f"| scikit-learn MLP on raw features | {cell(sklearn['test']['accuracy'])} | {cell(sklearn[UNSEEN]['accuracy'])} "
            f"| - | - | {sklearn['fit_cpu_seconds'] / 60:.1f} (CPU) |"
        )
    text_image = ["", "| fusion (note and scan agree?) | test | unseen speaker's split | train min |", "|---|---|---|---|"]
    for head in ("comparator", "concat", "gated"):
        run = metrics(root / "match_text_image" / head)
        if run:
            text_image.append(
                f"| {head} | {cell(run['test']['accuracy'])} | {cell(run['extra_tests'][UNSEEN]['accuracy'])} | {minutes(run)} |"
            )
    sklearn = load(root / "match_text_image" / "sklearn.json")
    if sklearn:
        text_image.append(
            f"| scikit-learn MLP on raw features | {cell(sklearn['test']['accuracy'])} | {cell(sklearn[UNSEEN]['accuracy'])} "
            f"| {sklearn['fit_cpu_seconds'] / 60:.1f} (CPU) |"
        )
    if len(lines) == 2:  # the header alone: no run of the relational lane yet
        lines = []
    return lines + (text_image if len(text_image) > 3 else [])


READER_STAGES = {
    "frozen": "stack frozen",
    "partial": "stack's top 2 blocks adapted",
    "copies": "stack's top 2 blocks adapted, 3 augmented copies cached",
    "freezing": "the same, the encoders frozen after 8 epochs of 15 (relation data without synthetic voices)",
    "adapted": "whole stack adapted",
}
"""The digit readers of `lane_readers` in scripts/demo_results.sh: folder -> how their speech stack trained."""


def relational_readers(root: Path) -> list[str]:
    """The relational heads over digit readers whose speech stack stayed frozen, adapted its top two blocks (on
    recordings augmented anew every epoch, or from 3 copies whose lower blocks' outputs are cached) or adapted whole at
    its own rate on augmented recordings (README: Where the relation's last points go); each modality alone is the
    test split's ablation (chance for a relational label)."""
    rows = [
        row
        for stage, readers_name in READER_STAGES.items()
        for row in _heads_over_readers(root / "match_readers", stage, readers_name, ("image", "audio"))
    ]
    if not rows:
        return []
    header = (
        "| digit readers | fusion | test | unseen speaker | image alone / audio alone | train min (readers + head) |"
    )
    return [header, "|---|---|---|---|---|---|", *rows]


OTHER_RELATIONS = {
    "text_audio": ("text + audio: does the note name the digit spoken?", ("text", "audio")),
    "text_image": ("text + image: does the note name the digit shown?", ("text", "image")),
}
"""The other relations of `lane_readers` in scripts/demo_results.sh: folder -> (question, its two modalities)."""


def other_relations(root: Path) -> list[str]:
    """The comparator, low-rank and transformer heads on the other relations, over readers of the note (the frozen
    MiniLM) and of the recording (its speech stack's top 2 blocks adapted from 3 cached augmented copies) or the scan;
    each modality alone is the test split's ablation (chance for a relational label)."""
    rows = [
        row
        for name, (question, modalities) in OTHER_RELATIONS.items()
        for row in _heads_over_readers(root / "match_readers", name, question, modalities)
    ]
    if not rows:
        return []
    header = "| relation | fusion | test | unseen speaker | each alone (in that order) | train min (readers + head) |"
    return [header, "|---|---|---|---|---|---|", *rows]


def _heads_over_readers(folder: Path, readers: str, label: str, modalities: tuple[str, str]) -> list[str]:
    """A row per head trained over the readers in `folder / readers` (its runs `{readers}_{head}`): `label`, the head,
    test and unseen-speaker accuracy, each of `modalities` alone, and both stages' train minutes."""
    readers_run = metrics(folder / readers)
    rows = []
    for head in FUSION_TYPES:
        run = metrics(folder / f"{readers}_{head}")
        if run is None:
            continue
        alone = " / ".join(cell(run["ablation"][f"without_{other}"]["accuracy"]) for other in reversed(modalities))
        rows.append(
            f"| {label} | {head} | {cell(run['test']['accuracy'])} | {cell(run['extra_tests'][UNSEEN]['accuracy'])} "
            f"| {alone} | {minutes(readers_run) if readers_run else '-'} + {minutes(run)} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default="outputs/results", help="The folder of scripts/demo_results.sh.")
    root = Path(parser.parse_args().results)
    sections = [
        ("Classification demo", classification(root)),
        ("Each modality inside the demo's model (gated)", modality_accuracy(root)),
        ("Per-example modality importance against the test-set ablation", modality_importance(root)),
        ("Alignment (contrastive pre-training on paired digits)", alignment(root)),
        ("Relational task: do the scan and the recording show the same digit?", relations(root)),
        ("Relational task on digit readers over the pretrained speech stack", relational_readers(root)),
        ("Other relations on digit readers", other_relations(root)),
    ]
    print(f"Measured on {machine()}.\n")
    for title, lines in sections:
        if lines:
            print(f"### {title}\n")
            print("\n".join(lines) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
