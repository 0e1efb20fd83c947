"""Training on the user's few photos: which checkpoints stock TrainLoraNode can train (read from the
file's header, no weights loaded) and whether a LoRA fits the base it is applied to. Plain Python."""
