"""Everything a trained model needs after training: the bundle, the classifier, (later) export and serving."""
