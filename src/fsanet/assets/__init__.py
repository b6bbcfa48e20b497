"""What the engines are made from and scored on: the model registry, verified downloads,
AFLW2000.
"""
