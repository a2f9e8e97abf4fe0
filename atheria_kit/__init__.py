"""atheria_kit: long training runs on notebook GPUs that stop cleanly and resume exactly."""

__version__ = "0.1.0"
