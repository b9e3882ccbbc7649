"""A model's life after training: the model folder of promoted versions, promotion and rollback."""
