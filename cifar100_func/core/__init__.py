"""The pure core: the model, the steps, optimisers, schedules and augmentation as functions of tensors and trees."""
