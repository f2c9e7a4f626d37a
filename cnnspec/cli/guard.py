"""How every command line ends: known failures exit 1 or 2 with a message, never a traceback;
a bug in cnnspec itself exits 3 and says so plainly."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def guarded(run: Callable[[], object]) -> None:
    """Run a command: known failures exit 1 or 2 with a message, never a traceback; a
    bug in cnnspec itself exits 3 and says so plainly."""
    try:
        run()
    except BrokenPipeError:  # the reader left early (`cnnspec check x | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's signal docs advise
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("CNNSPEC_DEBUG"):
            raise
        sys.stderr.write(f"cnnspec: internal error: {type(exc).__name__}: {exc} (set CNNSPEC_DEBUG=1 for a traceback)\n")
        sys.exit(3)
