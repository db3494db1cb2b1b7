"""The model: the checkpoint registry, loading, the reference text and image pipelines, encoding, the
SigLIP score, and generated test checkpoints. Every other sub-package builds on this one."""
