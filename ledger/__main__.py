"""``python -m ledger``: the ``ledger`` command."""

from ledger.cli import main

raise SystemExit(main())
