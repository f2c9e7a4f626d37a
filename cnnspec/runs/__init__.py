"""The run folder: its layout, checkpoints and their checksums, the files it writes, and loading a
run back. Imports the graph, data and the spec language; never the harness or inference."""
