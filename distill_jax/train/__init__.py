"""Training: TrainState, optimizers, train/eval steps, the loop and checkpoints."""
