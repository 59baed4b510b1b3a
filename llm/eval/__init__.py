"""Evaluation beyond the training loss: task metrics and prompting baselines.

Modules here read model outputs and labels; they never train (llm.train builds on them).
"""
