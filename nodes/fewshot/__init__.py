"""The start of the pipeline: the user's few real images (an ImageFolder), read, checked, split."""
