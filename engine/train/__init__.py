"""Fine-tuning and evaluation: data (folders, caption files, `datasets` on disk), the sigmoid loss (plain,
chunked, ring), the training loop (probe, LoRA, full), resumable Hugging Face checkpoints, devices (CUDA,
XLA, CPU, torchrun) and zero-shot / retrieval evaluation. Only `engine.cli` imports this package."""
