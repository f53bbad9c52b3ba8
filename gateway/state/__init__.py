"""Shared state: gateway keys and counters, in this process or in Redis for many replicas."""
