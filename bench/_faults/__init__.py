"""The fault phases of ``bench/bench_kill.py`` (issue 13): real training processes, real files, real faults.

``worker``: a training process around ``TrainingSession`` (a superset of ``tests/session_worker.py``: a remote that
can fail on command, gates at every write instant of ``finish()``) and a fork server that starts it in
milliseconds. ``harness``: the driver side (lives, gates, disk scans, hashes, tmpfs). ``phases``: one function per
fault, each returning a :class:`~bench._faults.harness.PhaseResult` row of the fault table.
"""
