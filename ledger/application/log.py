"""Direct reads of the event store that the library's recorders do not offer."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.persistence import Recorder
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg.sql import SQL, Identifier


def position_of(recorder: Recorder, originator_id: UUID, version: int) -> int:
    """Returns the notification id (log position) of one stored event."""
    if isinstance(recorder, SQLiteApplicationRecorder):
        statement = (
            f"SELECT rowid FROM {recorder.events_table_name} "  # noqa: S608 (a fixed identifier)
            "WHERE originator_id=? AND originator_version=?"
        )
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(statement, (originator_id.hex, version))
            row = c.fetchone()
        return int(row[0]) if row else 0
    if isinstance(recorder, PostgresApplicationRecorder):
        query = SQL(
            "SELECT notification_id FROM {schema}.{table} "
            "WHERE originator_id=%s AND originator_version=%s"
        ).format(
            schema=Identifier(recorder.datastore.schema),
            table=Identifier(recorder.events_table_name),
        )
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(query, (originator_id, version))
            result: Any = curs.fetchone()
        return int(result["notification_id"]) if result else 0
    if isinstance(recorder, POPOApplicationRecorder):
        # The in-memory recorder numbers notifications by their index in its list, from 1.
        index = recorder._stored_events_index[str(originator_id)].get(version)
        return 0 if index is None else index + 1
    msg = f"no log positions for {type(recorder).__name__}"
    raise NotImplementedError(msg)
