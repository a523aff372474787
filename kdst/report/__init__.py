"""Reports of a recipe: results tables, the compression report and the RNN-T matrix."""
