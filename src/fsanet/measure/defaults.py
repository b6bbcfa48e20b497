"""Defaults of the accuracy runs that the CLI shows, in a module that imports nothing."""

EVAL_BATCH = 32  # AFLW2000 crops per engine call when scoring
