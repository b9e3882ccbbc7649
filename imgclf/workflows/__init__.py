"""Things made of several trainings or models: ensembles (and, later, tuning and cross-validation)."""
