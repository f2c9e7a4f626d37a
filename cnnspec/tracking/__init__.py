"""Recording runs and studies in experiment trackers (MLflow), off unless asked for."""
