"""Fault injection for the reliability tests; inert unless `DISTILL_JAX_FAULTS` is set.

`DISTILL_JAX_FAULTS="sigkill_at_step=13,sigkill_in_save=20,sigterm_at_step=7"` makes a
training process deliver a real signal to itself at a precise point:

* `sigkill_at_step=N`: SIGKILL right after step N was dispatched (no cleanup at all);
* `sigkill_in_save=N`: SIGKILL while the checkpoint of step N is being written;
* `sigterm_at_step=N`: SIGTERM after step N (the preemption path).

The tests in `tests/test_faults.py` use it to kill real `distill-jax` subprocesses at
reproducible points and check that the restarted run ends bitwise where an uninterrupted
one does.
"""

from __future__ import annotations

import os
import signal

ENV = "DISTILL_JAX_FAULTS"
EVENTS = {
    "sigkill_at_step": signal.SIGKILL,
    "sigkill_in_save": signal.SIGKILL,
    "sigterm_at_step": signal.SIGTERM,
}


def _planned() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    plan = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in EVENTS or not value.isdigit():
            raise ValueError(f"{ENV}: cannot parse {item!r}; events: {', '.join(EVENTS)}")
        plan[name] = int(value)
    return plan


def inject(event: str, step: int) -> None:
    """Delivers the planned signal if `event` is planned for `step` (no-op otherwise)."""
    if os.environ.get(ENV) and _planned().get(event) == step:
        os.kill(os.getpid(), EVENTS[event])
