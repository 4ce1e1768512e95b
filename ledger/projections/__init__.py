"""Read models folded from the event log by one batched, exactly-once engine."""
