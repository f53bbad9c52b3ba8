"""Rate limits and budgets, shared across replicas: settings.py (the `limits:` section),
counters.py (the check-and-reserve engine: in memory, or one Lua script per request in Redis),
limiter.py (which rules apply to a request, estimates, settlement, spend rebuilt from the audit).
Import from the modules; this package imports nothing.
"""
