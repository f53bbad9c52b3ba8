"""Who is calling and what they may do: gateway keys, provider-key substitution, policy.

keys.py (secrets, hashing, the Key record), settings.py (AuthSettings, teams, users, config keys),
policy.py (Policy and its key → user → team → global evaluation), store.py (FileKeyStore,
RedisKeyStore), registry.py (the merged, hash-indexed view of config and stored keys),
access.py (Access: identifies callers on the request path and keeps the registry fresh).
Import from the modules; this package imports nothing.
"""
