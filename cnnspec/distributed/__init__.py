"""Launchers past one process: torchrun on this machine (`launch`) and Apache Spark (`spark`).
The process-group contract the loop runs over lives with the backends (`cnnspec.backends.group`)."""
