"""Similarity search: indexes of a layer's outputs over image collections, exact and approximate,
duplicates and contact sheets. Imports inference and runs."""
