"""The embedding map of an index (UMAP), coloured by cluster or zero-shot label; above index and label."""
