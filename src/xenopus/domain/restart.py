"""How long `on_crash = "restart"` waits before it restarts a domain that crashed.

Xen's toolstacks: xl waits 2 s before every re-creation (tools/xl/xl_vmcontrol.c,
create_domain(), DOMAIN_RESTART_NORMAL: `sleep(2)` before `goto start`) and never
refuses; xend refused to restart a domain that had run less than MINIMUM_RESTART_TIME
= 60 s ("restarting too fast ... Refusing to restart to avoid loops",
XendDomainInfo._restart, XendConstants.py; removed with xend in Xen commit 9e8672f1c3).

Here: a crash after at least 60 s of running restarts at once; a crash sooner waits xl's
2 s, and each further quick crash in a row waits twice as long as the last, up to 60 s,
so a domain that crashes as it boots costs a boot a minute, not a boot loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MINIMUM_RESTART_TIME = 60.0  # xend's: a shorter run is a quick crash
FIRST_DELAY = 2.0  # xl's sleep(2)
MAX_DELAY = 60.0


class RestartBackoff:
    """One domain's crash restarts: call `started()` when an incarnation starts and
    `delay()` when it has crashed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since = clock()
        self._quick = 0  # quick crashes in a row

    def started(self) -> None:
        self._since = self._clock()

    @property
    def ran(self) -> float:
        """Seconds the current incarnation has run."""
        return self._clock() - self._since

    def delay(self) -> float:
        """Seconds to wait before restarting after a crash now."""
        if self.ran >= MINIMUM_RESTART_TIME:
            self._quick = 0
            return 0.0
        self._quick += 1
        return min(FIRST_DELAY * 2 ** (self._quick - 1), MAX_DELAY)
