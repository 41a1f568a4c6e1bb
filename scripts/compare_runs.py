#!/usr/bin/env python
"""Compare finished runs of scripts/train.py: one Markdown row per output folder (its metrics.json), with the test
accuracy and macro F1 and the accuracy of the per-modality ablation.

    python scripts/compare_runs.py outputs/results/gated outputs/results/only_text
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from hf_multimodal import MODALITIES


def compare_runs(folders: Sequence[str | os.PathLike]) -> str:
    """A Markdown table comparing the `metrics.json` of several output folders (one row per run, ablations as
    columns), e.g. for the README's results.

    Example:

    ```python
    >>> print(compare_runs(["outputs/results/gated", "outputs/results/only_text"]))  # doctest: +SKIP
    ```
    """
    lines = [
        "| run | modalities | fusion | test accuracy | test macro F1 | accuracy without text | without image | "
        "without audio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for folder in folders:
        results = json.loads((Path(folder) / "metrics.json").read_text())
        modalities = results["modalities"]
        ablation = [
            f"{results['ablation'][f'without_{m}']['accuracy']:.3f}" if m in modalities and len(modalities) > 1 else "-"
            for m in MODALITIES
        ]
        fusion = results["fusion_type"] if len(modalities) > 1 else "-"
        lines.append(
            f"| {Path(folder).name} | {' + '.join(modalities)} | {fusion} | {results['test']['accuracy']:.3f} | "
            f"{results['test']['f1']:.3f} | " + " | ".join(ablation) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="output folders of scripts/train.py")
    print(compare_runs(parser.parse_args().folders))


if __name__ == "__main__":
    main()
