"""Hydra plugins of this project: an Optuna sweeper on Optuna 4 (optuna_sweeper.py)."""
