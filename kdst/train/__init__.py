"""Training: the trainer program and checkpoints."""
