"""The spec language: YAML with line marks, the grammar and block expansion, the `train:` section,
diagnostics that point at a line, and the JSON Schema. Imports only `cnnspec.errors` and `cnnspec.layers`
(the grammar reads the kinds' registry); never the graph or anything above it."""
