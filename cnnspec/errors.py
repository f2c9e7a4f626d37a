"""The one exception class a caller catches.

Every problem cnnspec reports to a person (a spec, data, a run folder, a file, an option,
a missing framework) is a ``CnnspecError``: one line that says what and where, the line
the command line prints before it exits 1. Each subsystem's own class (``SpecError``,
``DataError``, ``TrainingError``, ...) derives from it, and from the built-in class it
has always been (``ValueError``, ``RuntimeError``, ``LookupError``), so older ``except``
clauses still hold. A bug in cnnspec itself is never one.
"""

from __future__ import annotations


class CnnspecError(Exception):
    """A problem with what cnnspec was given, said in one line."""
