"""Work made of several training runs: cross-validation (out-of-fold predictions) and backend comparison."""
