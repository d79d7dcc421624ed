"""SIGINT (Ctrl-C) and SIGTERM (what Kubernetes and KubeRay send on preemption) in a training driver.

While a run is in its step loop, the first signal asks it to stop at the next step boundary: the driver
writes ``OUTPUT_DIR/.stop-requested`` (Ray Train workers look for it after every step; the GRPO controller
checks ``requested``), the run saves a checkpoint and ends, and the driver raises :class:`Interrupted`
naming it. Before the loop runs there is nothing to save, and a second signal means "now": both raise
:class:`Interrupted` at once. The CLI exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Callable

from rayalign.errors import Interrupted
from rayalign.workers.train_worker import STOP_FILE

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    def __init__(self, out: Path, echo: Callable[[str], None] = print):
        self.flag, self.echo = out / STOP_FILE, echo
        self.signum: int | None = None
        self.in_loop = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        self.flag.unlink(missing_ok=True)  # left by a driver that was killed outright
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self.flag.unlink(missing_ok=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None or not self.in_loop:
            raise Interrupted(f"{name}: stopped at once" + (" (a second signal)" if self.signum else
                                                            ", before the first training step; nothing to save"),
                              signum)
        self.signum = signum
        self.flag.touch()
        self.echo(f"{name}: stopping after the current step with a checkpoint (send it again to stop at once)")

    def stopped(self, step: int, max_steps: int, checkpoint: Path | None) -> Interrupted:
        """The error that ends a run stopped by the signal after ``step``."""
        name = signal.Signals(self.signum).name
        saved = f"; saved {checkpoint.name} in {checkpoint.parent}" if checkpoint else "; no checkpoint"
        return Interrupted(f"{name}: stopped after step {step} of {max_steps}{saved}", self.signum,
                           resumable=checkpoint is not None)
