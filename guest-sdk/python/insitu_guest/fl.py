"""Federated learning participants (the guest's side of a federated round).

The same format as the Rust SDK's ``insitu_guest::fl``: in a round, insitu runs
the training stage with one more read-only input after the datasets, the
**global model** -- a directory holding :data:`MODEL_FILE` (the parameters as
little-endian IEEE 754 doubles, nothing else) or empty in round 0 -- and passes
``--fl-round=N`` after the stage's own arguments. The guest writes its update
with :func:`write_update`: :data:`UPDATE_FILE` (same format) and
:data:`UPDATE_META`, ``{"weight": W, "len": L}``.
"""

from __future__ import annotations

import math
import os
import struct
from typing import List, Optional

from . import Input, Job

#: The global model's file in the model input.
MODEL_FILE = "model.f64"
#: The update's parameters in the output directory.
UPDATE_FILE = "update.f64"
#: The update's weight and length in the output directory.
UPDATE_META = "update.json"


def round_of(job: Job) -> Optional[int]:
    """The round this run is part of (``--fl-round``), if it is federated."""
    r = job.arg("fl-round")
    return int(r) if r is not None and r.isdigit() else None


def datasets(job: Job) -> List[Input]:
    """The dataset inputs: every input but the model's in a federated run."""
    return job.inputs[:-1] if round_of(job) is not None else list(job.inputs)


def decode(data: bytes, what: str = "the model") -> List[float]:
    """Little-endian doubles; ``ValueError`` if the size is not a multiple of 8."""
    if len(data) % 8:
        raise ValueError(f"{what} holds {len(data)} bytes, not a whole number of 8-byte doubles")
    return list(struct.unpack("<%dd" % (len(data) // 8), data))


def encode(params: List[float]) -> bytes:
    return struct.pack("<%dd" % len(params), *params)


def global_model(job: Job) -> Optional[List[float]]:
    """The global model this round starts from: ``None`` in round 0 (an empty
    model input) and outside federated runs."""
    if round_of(job) is None or not job.inputs:
        return None
    path = os.path.join(job.inputs[-1].path, MODEL_FILE)
    try:
        with open(path, "rb") as f:
            return decode(f.read(), path)
    except FileNotFoundError:
        return None


def write_update(job: Job, params: List[float], weight: int) -> None:
    """Writes the update: ``ValueError`` for a weight below 1 or a parameter
    that is not a finite number."""
    if weight < 1:
        raise ValueError("an update needs a weight (the number of samples) of at least 1")
    for i, p in enumerate(params):
        if not math.isfinite(p):
            raise ValueError(f"parameter {i} is {p}, not a finite number")
    job.write_output(UPDATE_FILE, encode(params))
    job.write_output(UPDATE_META, '{"weight": %d, "len": %d}\n' % (weight, len(params)))
