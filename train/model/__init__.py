"""The trained detector as an MLflow model: the pyfunc flavour (detector.py), logged and registered (registry.py).

Nothing heavy is imported here: a serving process imports this package (from the model's code_paths copy)
before the offline switches run, so yolov5 must not be imported at package import time.
"""
