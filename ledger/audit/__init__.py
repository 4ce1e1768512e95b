"""Tamper evidence for the event log: canonical events (``canonical``), their hash chain
(``chain``), signed checkpoints (``checkpoint``) and offline verification (``verify``)."""
