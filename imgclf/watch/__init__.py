"""Watching a deployed model: the prediction log, drift and novelty against the training reference, the review queue."""
