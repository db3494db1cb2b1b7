"""Looking inside SigLIP 2: NaFlex patch grids, text-to-patch similarity maps, the pooling head's attention,
one layer's attention and dense patch features, all on the image's real patch grid (padding never counted)."""
