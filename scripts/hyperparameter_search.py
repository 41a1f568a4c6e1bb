"""Hyper-parameter search of `scripts/train.py --hpo_trials N` (README: "Hyper-parameter search"): the search space
(default, or a JSON file), the `model_init` / `hp_space` / objective that `Trainer.hyperparameter_search` runs with
Optuna, and the record of the trials written into `metrics.json` and the model card.

A search space maps settings of `scripts/train.py` to the values a trial may take, one JSON object per setting:

    {
      "image_learning_rate": {"low": 3e-4, "high": 1e-2, "log": true},
      "modality_dropout": {"low": 0.0, "high": 0.6},
      "fusion_hidden_size": {"choices": [64, 128, 256]},
      "fusion_type": {"choices": ["gated", "concat", "comparator"]}
    }

`{"choices": [...]}` draws one of the values; `{"low": a, "high": b}` (with `"log": true` for a log scale, and
`"step"` for a grid) draws a number in [a, b], an integer for integer settings. Settings left out keep their
command-line value. `SEARCHABLE` lists the settings a space may name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from transformers import PreTrainedModel

from hf_multimodal import FUSION_TYPES, MODALITIES

SEARCHABLE: dict[str, type] = {
    "text_learning_rate": float,
    "image_learning_rate": float,
    "audio_learning_rate": float,
    "fusion_learning_rate": float,
    "fusion_type": str,
    "fusion_hidden_size": int,
    "modality_dropout": float,
    "modality_loss_weight": float,
    "contrastive_loss_weight": float,
}
"""Settings of `scripts/train.py` (its `ModelArguments`) a search space may name, and their type."""

_RANGE_KEYS = {"low", "high", "log", "step"}
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Dimension:
    """
    The values one setting takes in a search: `choices`, or a number in [`low`, `high`] (on a log scale with `log`,
    on a grid of `step`).

    Example:

    ```python
    >>> import optuna
    >>> width = Dimension("fusion_hidden_size", choices=(64, 128))
    >>> width.suggest(optuna.trial.FixedTrial({"fusion_hidden_size": 128}))
    128
    ```
    """

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value (Optuna returns the same value when asked again within a trial)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if SEARCHABLE[self.name] is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_json(self) -> dict[str, Any]:
        """The JSON form of a space file."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, **({"step": self.step} if self.step else {})}


def parse_search_space(space: Any, source: str = "the search space") -> dict[str, Dimension]:
    """
    Check a search space (the JSON object of a space file) and return its dimensions; every error names the setting,
    what is wrong, and the allowed settings or values.

    Example:

    ```python
    >>> parse_search_space({"modality_dropout": {"low": 0.0, "high": 0.5}})["modality_dropout"].high
    0.5
    >>> parse_search_space({"dropout": {"low": 0.0, "high": 0.5}})
    Traceback (most recent call last):
    ValueError: the search space names 'dropout', which is not searchable. Allowed settings: text_learning_rate, ...
    ```
    """
    if not isinstance(space, Mapping) or not space:
        raise ValueError(
            f"{source} must be a non-empty JSON object of setting: {{'choices': [...]}} or "
            f"{{'low': ..., 'high': ...}}, got {space!r}. Allowed settings: {', '.join(SEARCHABLE)}."
        )
    dimensions = {}
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise ValueError(
                f"{source} names {name!r}, which is not searchable. Allowed settings: {', '.join(SEARCHABLE)}."
            )
        dimensions[name] = _parse_dimension(name, spec, source)
    return dimensions


def _parse_dimension(name: str, spec: Any, source: str) -> Dimension:
    kind = SEARCHABLE[name]
    where = f"{source}: {name!r}"
    if not isinstance(spec, Mapping) or not (set(spec) == {"choices"} or {"low", "high"} <= set(spec) <= _RANGE_KEYS):
        raise ValueError(
            f"{where} must be {{'choices': [...]}} or {{'low': ..., 'high': ...}} (optional 'log', 'step'), got "
            f"{spec!r}."
        )
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: 'choices' must be a non-empty list, got {choices!r}.")
        for value in choices:
            if not _is_kind(value, kind):
                raise ValueError(f"{where}: choice {value!r} is not {_KIND_NAMES[kind]}.")
        if name == "fusion_type" and not set(choices) <= set(FUSION_TYPES):
            unknown = sorted(set(choices) - set(FUSION_TYPES))
            raise ValueError(f"{where}: unknown fusion types {unknown}; allowed: {', '.join(FUSION_TYPES)}.")
        return Dimension(name, choices=tuple(choices))
    if kind is str:
        raise ValueError(f"{where} takes {{'choices': [...]}}, not a range.")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high), *((("step", step),) if step is not None else ())):
        if not _is_kind(value, kind):
            raise ValueError(f"{where}: {key!r} must be {_KIND_NAMES[kind]}, got {value!r}.")
    if not isinstance(log, bool):
        raise TypeError(f"{where}: 'log' must be true or false, got {log!r}.")
    if not low <= high or low < 0:
        raise ValueError(f"{where}: needs 0 <= low <= high, got low={low}, high={high}.")
    if log and (low <= 0 or step is not None):
        raise ValueError(f"{where}: a log scale needs low > 0 and no 'step', got low={low}, step={step}.")
    if step is not None and step <= 0:
        raise ValueError(f"{where}: 'step' must be positive, got {step}.")
    if name == "modality_dropout" and high >= 1:
        raise ValueError(f"{where}: a probability below 1 is needed, got high={high}.")
    return Dimension(name, low=kind(low), high=kind(high), log=log, step=step)


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def load_search_space(path: str | Path) -> dict[str, Dimension]:
    """Read and check a search space file (the JSON format of the module docstring)."""
    try:
        space = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--hpo_space {path}: not a readable JSON file ({error}).") from error
    return parse_search_space(space, f"--hpo_space {path}")


def default_search_space(modalities: Sequence[str], frozen: Sequence[str], new_model: bool) -> dict[str, Dimension]:
    """
    The space searched without `--hpo_space`: the learning rate of each trained encoder (log-uniform; 1e-5-1e-3 for
    text, whose encoder is usually pretrained, 1e-4-1e-2 otherwise) and of the fusion part, the fusion type (every
    head), the modality dropout (0-0.6), and for a new model the fusion width (64, 128, 256).
    """
    ranges = {"text": (1e-5, 1e-3), "image": (1e-4, 1e-2), "audio": (1e-4, 1e-2)}
    space = [
        Dimension(f"{m}_learning_rate", low=ranges[m][0], high=ranges[m][1], log=True)
        for m in MODALITIES
        if m in modalities and m not in frozen
    ]
    space += [
        Dimension("fusion_learning_rate", low=1e-4, high=1e-2, log=True),
        Dimension("fusion_type", choices=FUSION_TYPES),
    ]
    if new_model:
        space.append(Dimension("fusion_hidden_size", choices=(64, 128, 256)))
    if len(modalities) > 1:
        space.append(Dimension("modality_dropout", low=0.0, high=0.6))
    return {dimension.name: dimension for dimension in space}


class HyperparameterSearch:
    """
    What `Trainer.hyperparameter_search` (Optuna backend) needs to search settings of `scripts/train.py`'s model
    arguments: `model_init(build_model)` makes the `model_init` that builds each trial's model with the caller's own
    model builder (so the fusion type and width may change between trials), `hp_space` draws the trial's settings,
    `compute_objective` reads the validation metric (the best so far of the trial, which is what Optuna's pruner is
    fed after every evaluation), and `run` searches and returns the record of the trials.

    Args:
        space (`dict[str, Dimension]`): The settings searched.
        model_args: `scripts/train.py`'s `ModelArguments` (a dataclass); a trial's are these with its settings.
        metric (`str`): The validation metric, as `metric_for_best_model` names it (`loss`, `accuracy`, ...).
        greater_is_better (`bool`): Whether a larger metric is better.

    Example:

    ```python
    >>> search = HyperparameterSearch(space, model_args, metric="loss", greater_is_better=False)  # doctest: +SKIP
    >>> trainer = MultimodalTrainer(model_init=search.model_init(build_model), ...)  # doctest: +SKIP
    >>> record = search.run(trainer, n_trials=8, seed=42, warmup_steps=75)  # doctest: +SKIP
    >>> record["best"]["params"]  # doctest: +SKIP
    {'fusion_type': 'concat', 'modality_dropout': 0.31, ...}
    ```
    """

    def __init__(self, space: Mapping[str, Dimension], model_args: Any, metric: str, greater_is_better: bool):
        self.space = dict(space)
        self.model_args = model_args
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.trainer = None
        self._best_of_trial: float | None = None

    def fusion_types(self) -> tuple[str, ...]:
        """The fusion heads the trials may build: the searched choices, else the command line's."""
        dimension = self.space.get("fusion_type")
        return tuple(dimension.choices) if dimension is not None else (self.model_args.fusion_type,)

    def settings(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's value of every searched setting."""
        return {name: dimension.suggest(trial) for name, dimension in self.space.items()}

    def arguments(self, settings: Mapping[str, Any]) -> Any:
        """The model arguments with `settings` applied."""
        return replace(self.model_args, **settings)

    def model_init(
        self, build_model: Callable[[Any], PreTrainedModel]
    ) -> Callable[[optuna.Trial | None], PreTrainedModel]:
        """`Trainer`'s `model_init`: `build_model` (model arguments -> model) applied to the trial's settings (to the
        command line's without a trial), the trainer's per-part learning rates set to the trial's."""

        def init(trial: optuna.Trial | None = None) -> PreTrainedModel:
            model_args = self.model_args if trial is None else self.arguments(self.settings(trial))
            self._best_of_trial = None
            if self.trainer is not None:
                self.trainer.learning_rates = model_args.learning_rates()
            return build_model(model_args)

        return init

    def hp_space(self, trial: optuna.Trial) -> dict[str, Any]:
        """`Trainer`'s `hp_space`: draws the settings, none of which is a `TrainingArguments` field (the model and
        the learning rates are set by `model_init`)."""
        self.settings(trial)
        return {}

    def compute_objective(self, metrics: Mapping[str, float]) -> float:
        """The best value of the validation metric in the trial so far."""
        if self.metric not in metrics:
            raise ValueError(
                f"the search optimises {self.metric} (--metric_for_best_model), which the evaluation does not report "
                f"(it reports {', '.join(sorted(metrics))})."
            )
        value = float(metrics[self.metric])
        if self._best_of_trial is not None:
            value = max(value, self._best_of_trial) if self.greater_is_better else min(value, self._best_of_trial)
        self._best_of_trial = value
        return value

    def run(self, trainer: Any, n_trials: int, seed: int, warmup_steps: int) -> dict[str, Any]:
        """
        Run `n_trials` trials with `trainer` (built with `model_init=self.model_init(...)`) and return their record:
        `trials` (number, state, settings, objective, evaluations, seconds), `best`, the `space`, the `objective`,
        `cpu_seconds` and `wall_seconds` of the search.

        The sampler is TPE (its first half of the trials, at most 10, are random); the pruner stops a trial whose
        best validation metric so far is worse than the median of the earlier trials' at the same step, at any
        evaluation from step `warmup_steps` on, once two trials have finished.
        """
        self.trainer = trainer
        storage = optuna.storages.InMemoryStorage()
        started_cpu, started = time.process_time(), time.perf_counter()
        trainer.hyperparameter_search(
            hp_space=self.hp_space,
            compute_objective=self.compute_objective,
            n_trials=n_trials,
            direction="maximize" if self.greater_is_better else "minimize",
            backend="optuna",
            study_name="hpo",
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, n_trials // 2))),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_steps),
        )
        cpu_seconds, wall_seconds = time.process_time() - started_cpu, time.perf_counter() - started
        study = optuna.load_study(study_name="hpo", storage=storage)
        trials = [
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "params": trial.params,
                "objective": trial.value if trial.value is not None else _last(trial.intermediate_values),
                "evaluations": len(trial.intermediate_values),
                "seconds": round(trial.duration.total_seconds(), 1) if trial.duration else None,
            }
            for trial in study.trials
        ]
        best = study.best_trial
        return {
            "objective": self.metric,
            "direction": "maximize" if self.greater_is_better else "minimize",
            "space": {name: dimension.to_json() for name, dimension in self.space.items()},
            "trials": trials,
            "best": {"number": best.number, "objective": best.value, "params": best.params},
            "cpu_seconds": round(cpu_seconds, 1),
            "wall_seconds": round(wall_seconds, 1),
        }


def _last(values: Mapping[int, float]) -> float | None:
    return values[max(values)] if values else None
