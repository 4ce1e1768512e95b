"""The audit hash chain: ``chain_hash(n) = SHA-256(chain_hash(n - 1) || JCS(event n))``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from hashlib import sha256
from typing import Any, Final

from ledger.audit.canonical import canonical_bytes

GENESIS: Final = bytes(32)
"""The hash that precedes the first event of a ledger: 32 zero bytes."""


class ChainOrderError(ValueError):
    """An event was offered out of log order (its position is not after the last one)."""


def next_hash(prev: bytes, canonical: bytes) -> bytes:
    """Returns SHA-256 of the previous raw 32-byte hash followed by the event's JCS bytes."""
    return sha256(prev + canonical).digest()


class ChainBuilder:
    """Folds canonical events in log order into their chain hashes.

    Starts from ``GENESIS``, or from a stored head (its hash and position) to continue
    a chain that was built earlier.
    """

    def __init__(
        self,
        head: bytes = GENESIS,
        position: int | None = None,
        encode: Callable[[Any], bytes] = canonical_bytes,
    ) -> None:
        """``encode`` gives an event's JCS bytes: ``canonical_bytes``, or for events of
        JSON types only (the log decoder's), ``json_canonical_bytes``."""
        if len(head) != len(GENESIS):
            raise ValueError(f"a chain hash has 32 bytes, not {len(head)}")
        self._head = head
        self._position = position
        self._encode = encode

    @property
    def head(self) -> bytes:
        """The hash of the last event folded in (``GENESIS`` before the first)."""
        return self._head

    @property
    def position(self) -> int | None:
        """The position of the last event folded in, or None before the first."""
        return self._position

    def append(self, event: Mapping[str, Any]) -> str:
        """Folds in one canonical event and returns its chain hash as lowercase hex.

        Raises ``ChainOrderError`` if its position does not follow the last one's, and
        ``CanonicalizationError`` if it has no JCS form.
        """
        position = event["position"]
        if type(position) is not int:
            raise ChainOrderError(f"position must be an integer, not {position!r}")
        if self._position is not None and position <= self._position:
            raise ChainOrderError(
                f"position {position} does not follow position {self._position}; "
                "events must be folded in log order"
            )
        self._head = next_hash(self._head, self._encode(event))
        self._position = position
        return self._head.hex()

    def fold(self, events: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, str]]:
        """Folds in each event in turn, yielding its position and chain hash (lowercase hex)."""
        for event in events:
            chain_hash = self.append(event)
            yield event["position"], chain_hash


def export_line(event: Mapping[str, Any], chain_hash: str) -> bytes:
    """Returns one export line: the JCS form of the event with its ``chain_hash`` (lowercase
    hex) added, and a newline."""
    return canonical_bytes({**event, "chain_hash": chain_hash}) + b"\n"


def export_lines(
    events: Iterable[Mapping[str, Any]], builder: ChainBuilder | None = None
) -> Iterator[bytes]:
    """Folds events in log order and yields their export lines."""
    chain = ChainBuilder() if builder is None else builder
    for event in events:
        yield export_line(event, chain.append(event))
