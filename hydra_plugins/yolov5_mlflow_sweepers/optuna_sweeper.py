"""An Optuna sweeper for Hydra, on today's Optuna.

hydra-optuna-sweeper 1.3.0 pins optuna<3, whose database storage fails with SQLAlchemy 2 (which
MLflow requires), so a sweep could not be resumed. This one asks Optuna 4 for trials in batches of
`n_jobs`, runs each batch through whatever launcher is configured (basic, joblib, kubernetes) and
tells Optuna the objective each trial returned; NaN (a failed trial) is told as a failure, and the
sweep goes on. With a `storage`, finished trials are kept there, and a rerun continues the study up
to `n_trials` in all.

Search space (`params`), in Hydra's override grammar:
  interval(a, b) -> float uniform;  tag(log, interval(a, b)) -> float log-uniform
  range(a, b[, step]) -> int (or float with a float step);  a,b,c or choice(a, b, c) -> categorical
"""


import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.yolov5_mlflow_sweepers.optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "yolov5-mlflow"
    storage: Optional[str] = None  # e.g. sqlite:///optuna.db: keeps the study so the sweep can resume
    n_trials: int = 10
    n_jobs: int = 1  # trials asked for, and launched, at once
    seed: Optional[int] = None
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="yolov5-mlflow")


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    value = override.value()
    if isinstance(value, IntervalSweep):
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    if isinstance(value, RangeSweep):
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return optuna.distributions.IntDistribution(value.start, value.stop - value.step, step=value.step)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.stop) - float(value.step),
                                                      step=float(value.step))
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(value.list)
    raise ValueError(f"sweeper params: {override.key_or_group}: use interval(), range() or choice(), got {value!r}")


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str, study_name: str, storage: Optional[str], n_trials: int, n_jobs: int,
                 seed: Optional[int], params: Dict[str, str]) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.seed = n_trials, n_jobs, seed
        parser = OverridesParser.create()
        self.space = {o.key_or_group: distribution(o)
                      for o in parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()])}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        if self.storage and self.storage.startswith("sqlite:///"):
            Path(self.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction=self.direction,
                                    sampler=optuna.samplers.TPESampler(seed=self.seed), load_if_exists=True)
        done = sum(t.state.is_finished() for t in study.trials)
        log.info(f"Optuna study {self.study_name}: {done} trials already done, {self.n_trials} wanted")
        job_idx = done
        while done < self.n_trials:
            trials = [study.ask(self.space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*arguments, *(f"{k}={v}" for k, v in t.params.items())] for t in trials]
            returns = self.launcher.launch(batch, initial_job_idx=job_idx)
            for trial, ret in zip(trials, returns):
                value = self._objective(ret)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            done += len(trials)
            job_idx += len(trials)
        self._write_results(study)

    @staticmethod
    def _objective(ret) -> Optional[float]:
        try:
            value = float(ret.return_value)
        except Exception as exc:  # a trial that raised: Optuna records it as failed, the sweep goes on
            log.warning(f"trial failed: {exc}")
            return None
        return None if math.isnan(value) else value

    def _write_results(self, study: optuna.Study) -> None:
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        results: Dict[str, Any] = {"name": "optuna", "n_trials": len(study.trials), "n_completed": len(completed)}
        if completed:
            results.update(best_params=study.best_params, best_value=study.best_value)
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")
        log.info(f"Optuna: {results}")
