#!/usr/bin/env python
"""Build the demo dataset (README: "Demo dataset") from the vendored recordings and scikit-learn's digits.

    python scripts/make_demo_dataset.py --output_dir outputs/demo/data
"""

import argparse
from pathlib import Path

from hf_multimodal.demo_data import build_demo_dataset, describe_demo_dataset, save_demo_dataset


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder to write the DatasetDict to (save_to_disk).")
    parser.add_argument(
        "--audio_dir",
        default=str(Path(__file__).resolve().parent / "demo_assets" / "fsdd"),
        help="Folder of Free Spoken Digit Dataset recordings (default: the vendored subset).",
    )
    parser.add_argument("--num_train", type=int, default=2400)
    parser.add_argument("--num_validation", type=int, default=400)
    parser.add_argument("--num_test", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="Replace the content of a non-empty --output_dir.")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_arguments()
    dataset = build_demo_dataset(args.audio_dir, args.num_train, args.num_validation, args.num_test, args.seed)
    save_demo_dataset(dataset, args.output_dir, overwrite=args.overwrite)
    print(describe_demo_dataset(dataset))
    print(f"Saved to {args.output_dir}")
