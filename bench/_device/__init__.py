"""The parts of ``bench/device_check.py`` (issue 17): what only a GPU can prove, each check in its own process.

``protocol``: the result rows a check prints and the driver parses, and bounded subprocess helpers.
``checks``: one function per row of the table, run as ``python -m bench._device.checks NAME`` under a deadline.
``resume_worker``: the training process that is SIGKILLed and resumed (row 1).
``ddp_worker``: the process ``torchrun`` starts on every rank (row 6).
"""
