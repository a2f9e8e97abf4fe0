"""Stand-ins for what cannot exist on a test machine (Colab's runtime, Kaggle's servers and secrets, NVML).

Each fake follows the real module's public API: the same names, signatures and exceptions.
"""
