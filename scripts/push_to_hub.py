#!/usr/bin/env python
"""Push a trained output folder (model, processor, code, generated model card) to the Hugging Face Hub in one commit.

Usage:
    python scripts/push_to_hub.py outputs/demo my-name/demo-classifier [--private] [--license apache-2.0]
        [--backbones text=sentence-transformers/all-MiniLM-L6-v2] [--commit-message "..."]

The token comes from `HF_TOKEN` or `hf auth login`; `HF_ENDPOINT` selects another Hub. A failed push exits with
status 1 and one message on stderr saying what failed and where the repo stands (still at its previous commit: a
push lands whole or not at all); rerunning the same command retries it.
"""

from __future__ import annotations

import argparse

from huggingface_hub.errors import HfHubHTTPError

from hf_multimodal.hub import HubPushError, push_output_folder_to_hub
from hf_multimodal.model_card import DEFAULT_LICENSE, parse_backbones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="output folder of scripts/train.py (saved model + processor, metrics.json)")
    parser.add_argument("repo_id", help="Hub repo to push to: name or namespace/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="license id for the model card")
    parser.add_argument(
        "--backbones", "--base-model", action="extend", nargs="+", default=[], metavar="MODALITY=REPO_ID",
        help="Hub id of a pretrained encoder loaded from a local folder (the card's base_model); --base-model is its "
        "name before hf_multimodal 0.2",
    )
    parser.add_argument("--commit-message", default=None)
    args = parser.parse_args()
    try:
        backbones = parse_backbones(args.backbones)
    except ValueError as error:
        parser.error(str(error))
    try:
        info = push_output_folder_to_hub(
            args.folder,
            args.repo_id,
            private=args.private or None,
            commit_message=args.commit_message,
            license=args.license,
            backbones=backbones,
        )
    except (HubPushError, HfHubHTTPError) as error:  # Hub failures: their message says what to do, no traceback
        parser.exit(1, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    print(f"pushed {args.folder} to {info.repo_url.repo_id} at commit {info.oid}: {info.commit_url}")


if __name__ == "__main__":
    main()
