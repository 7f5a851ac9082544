"""Synthetic labelled data for tests and demos, shared by every task generator."""
