"""Progress of a long simulation on the terminal: a tqdm bar when the ``demo`` extra is
installed, else a log line every tenth of the way."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("sobriety")

Progress = Callable[[int, int], None]


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    """A ``progress(done, total)`` callback, closed at the end of the ``with`` block."""
    try:
        from tqdm import tqdm
    except ImportError:  # the [demo] extra is not installed: log instead
        tenth = [0]

        def log_progress(done: int, total: int) -> None:
            reached = 10 * done // max(total, 1)
            if reached > tenth[0]:
                tenth[0] = reached
                log.info("%s: %d %%", description, 10 * reached)

        yield log_progress
        return
    bar = tqdm(unit="step", desc=description, leave=False)

    def show(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield show
    finally:
        bar.close()
