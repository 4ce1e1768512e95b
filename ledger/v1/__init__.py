"""Generated code of the ledger.v1 protos; regenerate with `make protos`."""
