#!/usr/bin/env python
"""Train, evaluate and ablate a text + image + audio classifier with `Trainer` (README: "Training").

    python scripts/train.py --dataset outputs/demo/data --output_dir outputs/demo/model [--help for every option]
    accelerate launch --config_file scripts/accelerate/cpu_2proc.yaml scripts/train.py ...   # same script, DDP

Writes the best model + processor (safetensors), metrics.json (test metrics and per-modality ablation) and
confusion_matrix.png into --output_dir and prints the results table.
"""

from hf_multimodal.training_multimodal import main


if __name__ == "__main__":
    main()
