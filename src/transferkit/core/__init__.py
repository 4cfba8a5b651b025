"""The bottom layer, used by every other: errors, the registry, atomic writes, the network check, the cache root."""
