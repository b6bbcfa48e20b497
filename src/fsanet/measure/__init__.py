"""How good and how fast: MAE on AFLW2000 (crops and photos), the accuracy matrix, benchmarks,
and `--precision auto`'s tuner.
"""
