"""Studies: hyperparameter and architecture search over a spec's ``tune:`` space (Optuna)."""
