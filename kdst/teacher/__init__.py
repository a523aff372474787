"""Stage-level programs that produce teacher outputs for distillation: top-k caches, n-best rescoring."""
