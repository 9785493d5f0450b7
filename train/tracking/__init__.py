"""Everything MLflow: the run's lifecycle (run.py), key rules (names.py), training event hooks (hooks.py)."""
