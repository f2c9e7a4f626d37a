"""The command line: one Typer app assembled in `app`, its commands grouped by the subsystem they
drive, and `launch`, the fast entry that runs `cnnspec check` without loading Typer.
The top floor: nothing in cnnspec imports it."""
