"""The domain: aggregates, value objects and the enforced rules. Pure: no I/O, no clock."""
