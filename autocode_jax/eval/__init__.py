"""Evaluation: prompt-mode runs on a query set and their accuracy (AutoCode analysis to come)."""
