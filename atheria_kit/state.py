"""Capture and restore of everything a training run needs to continue exactly where it stopped.

Why: resuming from weights alone changes the run. The optimizer's moments, the LR schedule, the
shuffling order, dropout masks and the counters must all come back too, and every random number
generator must continue its stream at the same point. And all of it must load under
``torch.load(weights_only=True)``: RNG states hold NumPy arrays, and since torch 2.6 that broke
resume in several projects (transformers #34631, #40500). Here every state is stored as tensors
and plain Python types only, so it loads with no allowlisting.

The pieces:

* :func:`capture_rng_state` / :func:`restore_rng_state`: Python ``random``, NumPy's legacy global
  state, torch CPU, every CUDA device, and any NumPy / torch ``Generator`` handed in.
* :class:`SeededGenerators`: a seeded ``torch.Generator`` (for a shuffling DataLoader) and NumPy
  ``Generator`` for the user's own randomness, resumable like everything else.
* :class:`TrainingProgress`: episode, global step, epoch, position inside the epoch, metric history.
* :func:`collect_state` / :func:`restore_state`: one state dict from named objects with
  ``state_dict()`` (models, optimizers, schedulers, GradScaler, user objects) plus the RNG state.
* :func:`validate_plain`: the check that a state holds only tensors and plain types.

Limits of exactness: restored streams make a resumed CPU run bit-identical to an uninterrupted one
when all randomness comes from these generators. Nondeterministic GPU kernels (atomics in
scatter/index_add, some cuDNN algorithms), a different number of threads or devices, and changed
code, batch size or data break bit-identity, though not the resume itself.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from atheria_kit._validation import require_int

__all__ = [
    "SeededGenerators",
    "TrainingProgress",
    "capture_rng_state",
    "collect_state",
    "restore_rng_state",
    "restore_state",
    "seed_everything",
    "validate_plain",
]

logger = logging.getLogger(__name__)

STATE_FORMAT = "atheria-state"
STATE_VERSION = 1

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Tags of the encoded NumPy values; chosen so that no bit-generator state uses them as a key.
_ARRAY_TAG = "__ndarray__"
_BIGINT_TAG = "__bigint__"

# Leaves that torch.load(weights_only=True) rebuilds without any allowlisting.
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_PLAIN_MAPPINGS = (dict, collections.OrderedDict)
_PLAIN_SEQUENCES = (list, tuple, set)


# --------------------------------------------------------------------------- plain-type check


def validate_plain(state: Any, name: str = "state") -> None:
    """Raise ``ValueError`` naming the first value in ``state`` that is not a tensor or a plain type.

    Plain means what ``torch.load(weights_only=True)`` rebuilds with no allowlisting: ``dict`` /
    ``OrderedDict`` / ``list`` / ``tuple`` / ``set`` of ``None``, ``bool``, ``int``, ``float``,
    ``complex``, ``str``, ``bytes``, tensors, ``torch.Size``, ``torch.dtype`` and ``torch.device``.
    Checked when the state is collected, so a bad value fails at save time with its path, not at
    resume time in the next session.
    """
    stack: list[tuple[str, Any]] = [(name, state)]
    while stack:
        path, value = stack.pop()
        kind = type(value)
        if kind in _PLAIN_LEAVES or kind in _PLAIN_TENSORS:
            continue
        if kind in _PLAIN_MAPPINGS:
            for key, item in value.items():
                if type(key) not in (str, int, bool, float, type(None), tuple):
                    raise ValueError(
                        f"{path} has a key {key!r} of type {type(key).__name__}; expected str, int, float, bool, "
                        "None or tuple keys (loadable with torch.load(weights_only=True))"
                    )
                if type(key) is tuple:
                    stack.append((f"{path}.keys()", key))
                stack.append((f"{path}[{key!r}]", item))
            # Module.state_dict() attaches version metadata as an instance attribute; it is pickled too.
            for attr, item in vars(value).items() if kind is collections.OrderedDict else ():
                stack.append((f"{path}.{attr}", item))
            continue
        if kind in _PLAIN_SEQUENCES:
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
            continue
        raise ValueError(
            f"{path} is a {kind.__module__}.{kind.__qualname__}; expected only tensors and plain types "
            "(dict, list, tuple, set, str, int, float, complex, bool, bytes, None, torch.Size/dtype/device) "
            "so that it loads with torch.load(weights_only=True)"
        )


# --------------------------------------------------------------------------- NumPy <-> plain


def _encode_numpy(value: Any) -> Any:
    """Turn a NumPy bit-generator state into tensors and plain types, reversibly.

    Arrays become tensors (unsigned integers viewed as the signed type of the same width, since
    older torch has no uint32/uint64), integers beyond int64 (PCG64's 128-bit state) become decimal
    strings, NumPy scalars become Python scalars.
    """
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        if array.dtype.kind == "u":
            array = array.view(np.dtype(f"int{array.dtype.itemsize * 8}"))
        return {_ARRAY_TAG: torch.from_numpy(array.copy()), "dtype": value.dtype.str}
    if isinstance(value, dict):
        return {key: _encode_numpy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_numpy(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
        return {_BIGINT_TAG: str(value)}
    return value


def _decode_numpy(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY_TAG in value:
            dtype = np.dtype(value["dtype"])
            array = value[_ARRAY_TAG].numpy()
            return array.view(dtype).copy() if dtype.kind == "u" else array.astype(dtype, copy=True)
        if _BIGINT_TAG in value:
            return int(value[_BIGINT_TAG])
        return {key: _decode_numpy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_numpy(item) for item in value]
    return value


# --------------------------------------------------------------------------- generators


def _generator_state(name: str, gen: Any) -> dict[str, Any]:
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy", "state": _encode_numpy(gen.bit_generator.state)}
    if isinstance(gen, np.random.RandomState):
        return {"kind": "numpy_random_state", "state": _encode_numpy(gen.get_state(legacy=False))}
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "device": str(gen.device), "state": gen.get_state()}
    raise ValueError(
        f"generators[{name!r}] is a {type(gen).__name__}; expected numpy.random.Generator, "
        "numpy.random.RandomState or torch.Generator"
    )


def _set_generator_state(name: str, gen: Any, saved: Mapping[str, Any]) -> None:
    kind = saved.get("kind")
    expected = _generator_state(name, gen)["kind"] if gen is not None else None
    if kind != expected:
        raise ValueError(f"generators[{name!r}]: the saved state is of kind {kind!r} but the generator is {expected!r}")
    if kind == "numpy":
        state = _decode_numpy(saved["state"])
        if state["bit_generator"] != type(gen.bit_generator).__name__:
            raise ValueError(
                f"generators[{name!r}]: saved bit generator is {state['bit_generator']!r} "
                f"but the generator uses {type(gen.bit_generator).__name__!r}"
            )
        gen.bit_generator.state = state
    elif kind == "numpy_random_state":
        gen.set_state(_decode_numpy(saved["state"]))
    else:
        gen.set_state(saved["state"])


def _check_names(what: str, saved: set[str], given: set[str]) -> None:
    missing, unexpected = sorted(given - saved), sorted(saved - given)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the saved state: {missing}")
        if unexpected:
            parts.append(f"in the saved state but not given: {unexpected}")
        raise ValueError(f"{what} do not match the saved state ({'; '.join(parts)}); pass strict=False to restore the common ones")


# --------------------------------------------------------------------------- global RNGs


def capture_rng_state(generators: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The state of every random number generator, as tensors and plain types.

    Covers Python ``random``, NumPy's legacy global state (``np.random.*``), torch CPU, every CUDA
    device when CUDA is available, and the named NumPy / torch generators in ``generators``.
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": _encode_numpy(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "generators": {name: _generator_state(name, gen) for name, gen in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, Any] | None = None, *, strict: bool = True) -> None:
    """Put every generator back to the state :func:`capture_rng_state` recorded.

    ``generators`` are the same named generators that were captured. With ``strict`` a name missing
    on either side is a ``ValueError``; otherwise the common ones are restored. CUDA states for
    devices that are not here are skipped with a warning (resuming a GPU run on CPU).
    """
    for key in ("python", "numpy", "torch"):
        if key not in state:
            raise ValueError(f"RNG state has no {key!r} entry; expected a dict from capture_rng_state()")
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state(_decode_numpy(state["numpy"]))
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda", []))
    if cuda_states:
        here = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if here != len(cuda_states):
            logger.warning(
                "checkpoint has RNG states for %d CUDA device(s) but %d are available; restoring the first %d",
                len(cuda_states), here, min(here, len(cuda_states)),
            )
        for index, cuda_state in enumerate(cuda_states[:here]):
            torch.cuda.set_rng_state(cuda_state, device=index)
    saved_gens: Mapping[str, Any] = state.get("generators", {})
    given = dict(generators or {})
    if strict:
        _check_names("generators", set(saved_gens), set(given))
    for name in sorted(set(saved_gens) & set(given)):
        _set_generator_state(name, given[name], saved_gens[name])


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global state and torch (CPU and every CUDA device) with ``seed``."""
    require_int("seed", seed, minimum=0, maximum=2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class SeededGenerators:
    """A seeded ``torch.Generator`` and NumPy ``Generator`` for the user's own randomness.

    ``gens.torch`` goes to a shuffling DataLoader (or :class:`atheria_kit.resumable.ResumableLoader`),
    ``gens.numpy`` replaces ``np.random.*`` calls. Pass the object to :func:`collect_state` like a
    model: both streams are saved and continue exactly after a resume.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = require_int("seed", seed, minimum=0, maximum=2**63 - 1)
        self.torch = torch.Generator().manual_seed(seed)
        self.numpy = np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "torch": self.torch.get_state(),
            "numpy": _encode_numpy(self.numpy.bit_generator.state),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("seed", "torch", "numpy"):
            if key not in state:
                raise ValueError(f"SeededGenerators state has no {key!r} entry; expected keys seed, torch, numpy")
        self.seed = int(state["seed"])
        self.torch.set_state(state["torch"])
        self.numpy.bit_generator.state = _decode_numpy(state["numpy"])


# --------------------------------------------------------------------------- counters


class TrainingProgress:
    """Counters and metric history of a run: episode, global step, epoch, batch inside the epoch.

    ``history`` maps a metric name to the list of values recorded with :meth:`record`, in order.
    """

    _COUNTERS = ("step", "episode", "epoch", "batch")

    def __init__(self) -> None:
        self.step = 0
        self.episode = 0
        self.epoch = 0
        self.batch = 0
        self.history: dict[str, list[float]] = {}

    def record(self, **metrics: float) -> None:
        """Append each metric's value (a finite or non-finite real number) to its history."""
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"metric {name}={value!r} is invalid; expected a real number")
            self.history.setdefault(name, []).append(float(value))

    def last(self, name: str, default: float = math.nan) -> float:
        """The latest recorded value of ``name`` (``default`` when none)."""
        values = self.history.get(name)
        return values[-1] if values else default

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self._COUNTERS}
        state["history"] = {name: list(values) for name, values in self.history.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [key for key in (*self._COUNTERS, "history") if key not in state]
        if missing:
            raise ValueError(f"TrainingProgress state is missing {missing}; expected keys {[*self._COUNTERS, 'history']}")
        for name in self._COUNTERS:
            setattr(self, name, require_int(f"TrainingProgress.{name}", state[name], minimum=0))
        self.history = {str(name): [float(v) for v in values] for name, values in state["history"].items()}

    def __repr__(self) -> str:
        return (
            f"TrainingProgress(step={self.step}, episode={self.episode}, epoch={self.epoch}, "
            f"batch={self.batch}, metrics={sorted(self.history)})"
        )


# --------------------------------------------------------------------------- whole state


def _object_state(name: str, obj: Any) -> Any:
    if isinstance(obj, (np.random.Generator, np.random.RandomState, torch.Generator)):
        return {"__generator__": _generator_state(name, obj)}
    state_dict = getattr(obj, "state_dict", None)
    if not callable(state_dict):
        raise ValueError(
            f"objects[{name!r}] is a {type(obj).__name__} without state_dict(); expected a model, optimizer, "
            "LR scheduler, GradScaler, generator or any object with state_dict()/load_state_dict()"
        )
    return state_dict()


def collect_state(objects: Mapping[str, Any], *, rng_state: Mapping[str, Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """One state dict for ``objects`` (name -> object with ``state_dict()``), the RNGs and ``extra``.

    The RNG states are captured now, unless ``rng_state`` (from :func:`capture_rng_state` at an earlier
    moment) is given.

    Models, optimizers, LR schedulers, AMP GradScaler, :class:`TrainingProgress`,
    :class:`SeededGenerators`, NumPy/torch generators and any user object with
    ``state_dict()``/``load_state_dict()`` are accepted. ``extra`` holds plain values returned as-is
    by :func:`restore_state`. The result holds *live* tensors (a model's ``state_dict()`` shares
    storage with its parameters): ``CheckpointManager.save`` snapshots it before writing.
    Raises ``ValueError`` naming any value that would not load under ``weights_only=True``.
    """
    if not isinstance(objects, Mapping):
        raise ValueError(f"objects={type(objects).__name__} is invalid; expected a mapping of name -> object")
    for name in objects:
        if not isinstance(name, str):
            raise ValueError(f"objects key {name!r} is invalid; expected a string name")
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "objects": {name: _object_state(name, obj) for name, obj in objects.items()},
        "rng": capture_rng_state() if rng_state is None else rng_state,
        "extra": dict(extra),
    }
    validate_plain(state["objects"], "objects")
    validate_plain(state["extra"], "extra")
    return state


def restore_state(objects: Mapping[str, Any], state: Mapping[str, Any], strict: bool = True, *, rng: bool = True) -> dict[str, Any]:
    """Load ``state`` (from :func:`collect_state`) into ``objects`` and restore the RNGs; return ``extra``.

    With ``strict`` every name in ``objects`` must be in the state and vice versa; a mismatch is a
    ``ValueError`` naming the missing and the unexpected names, raised before anything is changed.
    The RNGs are restored last, so a ``load_state_dict`` that draws random numbers cannot shift them.
    """
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"state format={found!r} is invalid; expected {STATE_FORMAT!r} (a dict from collect_state())")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"state version={state.get('version')!r} is not supported; expected {STATE_VERSION}")
    saved: Mapping[str, Any] = state["objects"]
    if strict:
        _check_names("objects", set(saved), set(objects))
    else:
        skipped = sorted(set(saved) ^ set(objects))
        if skipped:
            logger.warning("restore_state(strict=False): not restored (present on one side only): %s", skipped)
    for name in [n for n in objects if n in saved]:
        obj, obj_state = objects[name], saved[name]
        try:
            if isinstance(obj_state, Mapping) and "__generator__" in obj_state:
                _set_generator_state(name, obj, obj_state["__generator__"])
            else:
                load = getattr(obj, "load_state_dict", None)
                if not callable(load):
                    raise ValueError(f"a {type(obj).__name__} has no load_state_dict()")
                load(obj_state)
        except Exception as exc:
            raise ValueError(f"restoring objects[{name!r}] ({type(obj).__name__}) failed: {exc}") from exc
    if rng:
        restore_rng_state(state["rng"])
    return dict(state.get("extra", {}))
