"""Fine-tuning on Ray Train + DeepSpeed: frames, data, loss, DeepSpeed config, the worker loop, the launcher."""
