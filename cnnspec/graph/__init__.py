"""The validated network: a named DAG with shapes, parameters and MACs (`dag`), loading a spec or a
zoo name into one (`load`), which layers train (`tuning`) and its seeded weights (`weights`).
Imports the spec language, layers and calculators; nothing above."""

from cnnspec.graph.dag import Graph, Node, build_graph

__all__ = ["Graph", "Node", "build_graph"]
