"""Principals: who a bearer token stands for, loaded from a TOML principals file.

A principals file holds one ``[[principal]]`` table per caller::

    [[principal]]
    id = "sse-gateway"
    role = "exchange"
    participant_id = "5f0c6c1e-1d0b-4a57-9a52-7c1f3c0b2a10"
    token_sha256 = "<lowercase hex SHA-256 of the bearer token>"

Only token hashes are stored, so the file can be read by operators without handing
out credentials.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import secrets
import stat
import tomllib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Role(enum.StrEnum):
    """What a principal may do; see ``ledger.api.authz`` for the policy."""

    EXCHANGE = "exchange"
    REGISTRY = "registry"
    ASSESSOR = "assessor"
    AUDITOR = "auditor"
    OPERATOR = "operator"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``scope`` holds the exchange participant ids the principal may touch: exactly its
    own participant id for an exchange, an optional restriction for an auditor (empty
    means every exchange), and nothing for the other roles. An assessor's ``id`` is its
    participant id, because it records assessments as itself.
    """

    id: str
    role: Role
    scope: frozenset[str] = field(default_factory=frozenset)


class PrincipalsFileError(ValueError):
    """The principals file cannot be used; the message names the entry and the key."""


# Only lowercase hex is accepted: hashes are looked up as strings, so an upper-case
# hash would load fine and then silently never match.
_HEX_DIGITS = frozenset("0123456789abcdef")
_KEYS = frozenset({"id", "role", "token_sha256", "participant_id", "exchanges"})

# Fixed so that the dev participants have the same ids on every machine and run: a
# walkthrough can register them once and keep using them.
DEV_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://ledger.invalid/dev")
DEV_EXCHANGE_PARTICIPANT_ID = str(uuid.uuid5(DEV_NAMESPACE, "dev-exchange"))
DEV_ASSESSOR_PARTICIPANT_ID = str(uuid.uuid5(DEV_NAMESPACE, "dev-assessor"))

DEV_PRINCIPALS_FILE = "dev-principals.toml"
DEV_TOKENS_FILE = "dev-tokens.json"


def hash_token(token: str) -> str:
    """Returns the lowercase hex SHA-256 of a bearer token, as stored in the file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class PrincipalStore:
    """Maps bearer tokens to principals by the SHA-256 of the token."""

    def __init__(self, principals_by_hash: Mapping[str, Principal]) -> None:
        self._by_hash: dict[str, Principal] = dict(principals_by_hash)

    @classmethod
    def load(cls, path: Path) -> PrincipalStore:
        """Reads a principals file; raises ``PrincipalsFileError`` if it is unusable."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PrincipalsFileError(
                f"principals file {path}: cannot read it ({exc.strerror or exc})"
            ) from exc
        return cls.from_toml(text, source=str(path))

    @classmethod
    def from_toml(cls, text: str, source: str = "<principals>") -> PrincipalStore:
        """Parses principals file text; ``source`` names the file in error messages."""
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PrincipalsFileError(f"principals file {source}: not valid TOML: {exc}") from exc
        unknown = sorted(set(document) - {"principal"})
        if unknown:
            raise PrincipalsFileError(
                f"principals file {source}: unexpected top-level key {unknown[0]!r}; "
                "write each principal as a [[principal]] table"
            )
        entries = document.get("principal")
        if entries is None or entries == []:
            # A server with no principals could never be called; say so at start-up
            # rather than answering UNAUTHENTICATED to everyone.
            raise PrincipalsFileError(
                f"principals file {source}: no [[principal]] entries; add at least one "
                "(or run `ledger serve --dev` for local development)"
            )
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise PrincipalsFileError(
                f"principals file {source}: 'principal' must be an array of tables "
                "written as [[principal]]"
            )
        by_hash: dict[str, Principal] = {}
        seen_ids: dict[str, int] = {}
        for number, entry in enumerate(entries, start=1):
            token_sha256, principal = _parse_entry(
                entry, f"principals file {source}: principal #{number}"
            )
            where = f"principals file {source}: principal #{number} (id {principal.id!r})"
            if principal.id in seen_ids:
                raise PrincipalsFileError(
                    f"{where}: key 'id': already used by principal #{seen_ids[principal.id]}; "
                    "ids must be unique because they are written into every event"
                )
            if token_sha256 in by_hash:
                raise PrincipalsFileError(
                    f"{where}: key 'token_sha256': the same token hash is already used by "
                    f"principal {by_hash[token_sha256].id!r}; give each principal its own token"
                )
            seen_ids[principal.id] = number
            by_hash[token_sha256] = principal
        return cls(by_hash)

    @classmethod
    def from_tokens(cls, entries: Iterable[tuple[str, Principal]]) -> PrincipalStore:
        """Builds a store from (token, principal) pairs, for tests and tooling."""
        return cls({hash_token(token): principal for token, principal in entries})

    @property
    def principals(self) -> tuple[Principal, ...]:
        """Returns every principal, in file order."""
        return tuple(self._by_hash.values())

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, token: str) -> Principal | None:
        """Returns the principal a bearer token stands for, or None if it is unknown."""
        if not token:
            return None
        # A plain dict lookup by hash is enough here; hmac.compare_digest over every
        # entry would add nothing. Its timing can only tell an attacker how a SHA-256
        # output they chose compares with stored hashes, and stored hashes are not
        # secret-equivalent: presenting a hash is useless, and finding a token from one
        # means inverting SHA-256 of 256 random bits.
        return self._by_hash.get(hash_token(token))


def _parse_entry(entry: Mapping[str, Any], where: str) -> tuple[str, Principal]:
    """Validates one ``[[principal]]`` table; returns its token hash and principal."""
    unknown = sorted(set(entry) - _KEYS)
    if "token" in unknown:
        raise PrincipalsFileError(
            f"{where}: key 'token': plaintext tokens are not accepted; store "
            "token_sha256 = lowercase hex SHA-256 of the token instead "
            '(e.g. `printf %s "$TOKEN" | sha256sum`)'
        )
    if unknown:
        raise PrincipalsFileError(
            f"{where}: unknown key {unknown[0]!r}; expected some of {', '.join(sorted(_KEYS))}"
        )

    principal_id = _required_str(entry, "id", where)
    where = f"{where} (id {principal_id!r})"

    raw_role = _required_str(entry, "role", where)
    try:
        role = Role(raw_role)
    except ValueError:
        raise PrincipalsFileError(
            f"{where}: key 'role': unknown role {raw_role!r}; expected one of "
            f"{', '.join(r.value for r in Role)}"
        ) from None

    token_sha256 = _required_str(entry, "token_sha256", where)
    if len(token_sha256) != 64 or not set(token_sha256) <= _HEX_DIGITS:
        raise PrincipalsFileError(
            f"{where}: key 'token_sha256': expected 64 lowercase hex digits "
            "(the SHA-256 of the token), got "
            f"{len(token_sha256)} characters"
        )

    participant_id: str | None = None
    if "participant_id" in entry:
        participant_id = _uuid(
            _required_str(entry, "participant_id", where), "participant_id", where
        )

    exchanges: list[str] = []
    if "exchanges" in entry:
        raw_exchanges = entry["exchanges"]
        if not isinstance(raw_exchanges, list) or not all(
            isinstance(e, str) for e in raw_exchanges
        ):
            raise PrincipalsFileError(
                f"{where}: key 'exchanges': expected an array of exchange participant ids"
            )
        exchanges = [_uuid(e, "exchanges", where) for e in raw_exchanges]

    if "exchanges" in entry and role is not Role.AUDITOR:
        raise PrincipalsFileError(
            f"{where}: key 'exchanges': only an auditor can be restricted to exchanges; "
            f"the scope of role {role.value} follows from the role"
        )

    scope: frozenset[str] = frozenset()
    if role is Role.EXCHANGE:
        if participant_id is None:
            raise PrincipalsFileError(
                f"{where}: key 'participant_id': required for role exchange; it is the "
                "participant id of the venue this principal operates"
            )
        scope = frozenset({participant_id})
    elif role is Role.ASSESSOR:
        # An assessor records assessments as itself, so its principal id is the
        # participant id that RecordAssessment compares against.
        principal_id = _uuid(
            principal_id, "id", where, why=" (an assessor's id is its participant id)"
        )
        if participant_id is not None and participant_id != principal_id:
            raise PrincipalsFileError(
                f"{where}: key 'participant_id': must equal id for role assessor, "
                "whose id is its participant id; drop participant_id or make them equal"
            )
    elif role is Role.AUDITOR:
        if participant_id is not None:
            raise PrincipalsFileError(
                f"{where}: key 'participant_id': not used for role auditor; use "
                "exchanges = [...] to restrict it to some exchanges"
            )
        scope = frozenset(exchanges)
    elif participant_id is not None:
        raise PrincipalsFileError(
            f"{where}: key 'participant_id': only used for roles exchange and assessor"
        )
    return token_sha256, Principal(id=principal_id, role=role, scope=scope)


def _required_str(entry: Mapping[str, Any], key: str, where: str) -> str:
    if key not in entry:
        raise PrincipalsFileError(f"{where}: key {key!r} is missing")
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise PrincipalsFileError(f"{where}: key {key!r}: expected a non-empty string")
    return value


def _uuid(value: str, key: str, where: str, why: str = "") -> str:
    """Returns ``value`` as a lowercase canonical UUID, the form aggregate ids take."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise PrincipalsFileError(
            f"{where}: key {key!r}: {value!r} is not a UUID{why}; participant ids are "
            "the UUIDs the ledger assigned at RegisterParticipant"
        ) from None


@dataclass(frozen=True)
class DevCredentials:
    """The files and tokens of a local development principals set, one per role."""

    principals_file: Path
    tokens_file: Path
    tokens: Mapping[Role, str]
    principal_ids: Mapping[Role, str]
    participant_ids: Mapping[Role, str]
    reused: bool

    def token_for(self, role: Role) -> str:
        """Returns the bearer token of the dev principal with ``role``."""
        return self.tokens[role]


def write_dev_principals(
    var_dir: Path, participant_ids: Mapping[str, str] | None = None
) -> DevCredentials:
    """Writes (or reuses) a dev principals file and its plaintext tokens under ``var_dir``.

    ``participant_ids`` may override the participant ids of the ``exchange`` and
    ``assessor`` principals; by default they are ``DEV_EXCHANGE_PARTICIPANT_ID`` and
    ``DEV_ASSESSOR_PARTICIPANT_ID``. Both files are created with mode 0600.
    """
    wanted = {
        Role.EXCHANGE: DEV_EXCHANGE_PARTICIPANT_ID,
        Role.ASSESSOR: DEV_ASSESSOR_PARTICIPANT_ID,
    }
    for key, value in (participant_ids or {}).items():
        if key not in (Role.EXCHANGE.value, Role.ASSESSOR.value):
            raise ValueError(
                f"participant_ids: unexpected role {key!r}; only 'exchange' and "
                "'assessor' dev principals have participant ids"
            )
        try:
            wanted[Role(key)] = str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"participant_ids[{key!r}]: {value!r} is not a UUID") from None

    principal_ids = {role: f"dev-{role.value}" for role in Role}
    principal_ids[Role.ASSESSOR] = wanted[Role.ASSESSOR]

    principals_file = var_dir / DEV_PRINCIPALS_FILE
    tokens_file = var_dir / DEV_TOKENS_FILE

    tokens = _reusable_tokens(principals_file, tokens_file, principal_ids, wanted)
    reused = tokens is not None
    if tokens is None:
        tokens = {role: secrets.token_urlsafe(32) for role in Role}
        var_dir.mkdir(parents=True, exist_ok=True)
        _write_private(principals_file, _dev_principals_toml(tokens, principal_ids, wanted))
        _write_private(tokens_file, _dev_tokens_json(tokens, principal_ids, wanted))

    return DevCredentials(
        principals_file=principals_file,
        tokens_file=tokens_file,
        tokens=tokens,
        principal_ids=principal_ids,
        participant_ids=wanted,
        reused=reused,
    )


def _reusable_tokens(
    principals_file: Path,
    tokens_file: Path,
    principal_ids: Mapping[Role, str],
    participant_ids: Mapping[Role, str],
) -> dict[Role, str] | None:
    """Returns the tokens of existing dev files if they still describe the wanted set.

    Keeping them stable means a developer's shell variables and scripts survive a
    ``make run`` restart. Anything off (missing, edited, other ids, readable by
    others) yields None and the files are written afresh.
    """
    try:
        for path in (principals_file, tokens_file):
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                # The tokens may have been seen by other users; issue new ones.
                return None
        saved = json.loads(tokens_file.read_text(encoding="utf-8"))
        store = PrincipalStore.load(principals_file)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or len(store) != len(Role):
        return None
    tokens: dict[Role, str] = {}
    for role in Role:
        token = saved.get(role.value)
        if not isinstance(token, str):
            return None
        principal = store.authenticate(token)
        if principal != _dev_principal(role, principal_ids, participant_ids):
            return None
        tokens[role] = token
    return tokens


def _dev_principal(
    role: Role, principal_ids: Mapping[Role, str], participant_ids: Mapping[Role, str]
) -> Principal:
    scope = frozenset({participant_ids[Role.EXCHANGE]}) if role is Role.EXCHANGE else frozenset()
    return Principal(id=principal_ids[role], role=role, scope=scope)


def _dev_principals_toml(
    tokens: Mapping[Role, str],
    principal_ids: Mapping[Role, str],
    participant_ids: Mapping[Role, str],
) -> str:
    lines = [
        "# Local development principals written by `ledger serve --dev`.",
        f"# The plaintext tokens are in {DEV_TOKENS_FILE}; never use these outside a laptop.",
    ]
    for role in Role:
        # json.dumps yields a valid TOML basic string for these ASCII values.
        lines += [
            "",
            "[[principal]]",
            f"id = {json.dumps(principal_ids[role])}",
            f"role = {json.dumps(role.value)}",
        ]
        if role is Role.EXCHANGE:
            lines.append(f"participant_id = {json.dumps(participant_ids[role])}")
        lines.append(f"token_sha256 = {json.dumps(hash_token(tokens[role]))}")
    return "\n".join(lines) + "\n"


def _dev_tokens_json(
    tokens: Mapping[Role, str],
    principal_ids: Mapping[Role, str],
    participant_ids: Mapping[Role, str],
) -> str:
    document: dict[str, object] = {role.value: tokens[role] for role in Role}
    document["principal_ids"] = {role.value: principal_ids[role] for role in Role}
    document["participant_ids"] = {role.value: pid for role, pid in participant_ids.items()}
    return json.dumps(document, indent=2) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Atomically replaces ``path`` with ``text``, readable by the owner only.

    The temporary file is created with mode 0600 by ``os.open`` itself, so there is no
    moment at which the tokens are readable by others; ``os.replace`` then swaps it in
    whole, so a crash never leaves a half-written file.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
