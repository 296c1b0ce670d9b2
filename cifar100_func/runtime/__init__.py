"""Running the core: the one loop, the device backend, checkpoints, event files and safe writes."""
