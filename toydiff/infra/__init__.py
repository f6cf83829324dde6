"""Plumbing: argument validation, atomic writes, run ownership (locks, signals, resume), CLI helpers."""
