"""Training data: loading canonical conversations and turning them into padded batches."""
