"""Work made of several training runs or models: cross-validation (out-of-fold predictions), backend comparison
and ensembles."""
