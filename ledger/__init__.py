"""An event-sourced trading ledger for regulated data markets."""
