"""Verify, export and import front ends: the rules per framework live in `cnnspec.backends`.
Imports runs, data, the graph and backends (by name); never the harness or inference."""
