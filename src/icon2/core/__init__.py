"""The floor everything stands on: the params schema, table schemas and readers, atomic IO,
hashes, provenance and user-facing errors. Imports no ML library (no torch, TRL or
transformers), so reading params or a table is cheap in every stage.
"""
