"""The training loop and what it applies each epoch: schedule, optimizer, sampler, augmentation, metrics, checkpoints."""
