"""Principals: loading the principals file, authenticating tokens, dev credentials."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.api.principals import (
    DEV_ASSESSOR_PARTICIPANT_ID,
    DEV_EXCHANGE_PARTICIPANT_ID,
    Principal,
    PrincipalsFileError,
    PrincipalStore,
    Role,
    hash_token,
    write_dev_principals,
)

EXCHANGE_ID = "0b7c8f52-3f4e-4c59-9a67-1d2f3a4b5c6d"
OTHER_EXCHANGE_ID = "9e8d7c6b-5a49-4837-8261-504f3e2d1c0b"
ASSESSOR_ID = "4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d"


def entry(**keys: object) -> str:
    """Renders one [[principal]] table from its keys."""
    lines = ["[[principal]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


VALID_FILE = "\n".join(
    [
        entry(
            id="sse",
            role="exchange",
            participant_id=EXCHANGE_ID.upper(),
            token_sha256=hash_token("exchange-token"),
        ),
        entry(id="registry", role="registry", token_sha256=hash_token("registry-token")),
        entry(id=ASSESSOR_ID, role="assessor", token_sha256=hash_token("assessor-token")),
        entry(id="auditor", role="auditor", token_sha256=hash_token("auditor-token")),
        entry(
            id="regional-auditor",
            role="auditor",
            exchanges=[EXCHANGE_ID, OTHER_EXCHANGE_ID],
            token_sha256=hash_token("regional-token"),
        ),
        entry(id="ops", role="operator", token_sha256=hash_token("operator-token")),
        entry(id="root", role="admin", token_sha256=hash_token("admin-token")),
    ]
)


def test_hash_token_is_lowercase_hex_sha256() -> None:
    # The well-known SHA-256 of "abc".
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_each_token_authenticates_as_its_principal_with_its_scope() -> None:
    store = PrincipalStore.from_toml(VALID_FILE)

    assert len(store) == 7
    assert store.authenticate("exchange-token") == Principal(
        "sse", Role.EXCHANGE, frozenset({EXCHANGE_ID})
    )
    assert store.authenticate("registry-token") == Principal("registry", Role.REGISTRY)
    assert store.authenticate("assessor-token") == Principal(ASSESSOR_ID, Role.ASSESSOR)
    assert store.authenticate("auditor-token") == Principal("auditor", Role.AUDITOR)
    assert store.authenticate("regional-token") == Principal(
        "regional-auditor", Role.AUDITOR, frozenset({EXCHANGE_ID, OTHER_EXCHANGE_ID})
    )
    assert store.authenticate("operator-token") == Principal("ops", Role.OPERATOR)
    assert store.authenticate("admin-token") == Principal("root", Role.ADMIN)


@pytest.mark.parametrize(
    "token",
    ["", "exchange-token ", "Exchange-token", hash_token("exchange-token"), "nope"],
)
def test_an_unknown_token_authenticates_as_nobody(token: str) -> None:
    store = PrincipalStore.from_toml(VALID_FILE)
    assert store.authenticate(token) is None


@given(st.text(min_size=1), st.text(min_size=1))
def test_only_the_exact_token_authenticates(token: str, other: str) -> None:
    principal = Principal("p", Role.OPERATOR)
    store = PrincipalStore.from_tokens([(token, principal)])
    assert store.authenticate(token) == principal
    assert store.authenticate(other) == (principal if other == token else None)


def test_an_assessor_id_is_normalised_like_a_participant_id() -> None:
    store = PrincipalStore.from_toml(
        entry(id=ASSESSOR_ID.upper(), role="assessor", token_sha256=hash_token("t"))
    )
    assert store.authenticate("t") == Principal(ASSESSOR_ID, Role.ASSESSOR)


def test_load_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "principals.toml"
    path.write_text(VALID_FILE, encoding="utf-8")
    assert len(PrincipalStore.load(path)) == 7

    with pytest.raises(PrincipalsFileError, match=r"missing\.toml: cannot read it"):
        PrincipalStore.load(tmp_path / "missing.toml")


GOOD_HASH = hash_token("t")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[principal]\nid = ", "not valid TOML"),
        ("", "no \\[\\[principal\\]\\] entries"),
        ("principal = []", "no \\[\\[principal\\]\\] entries"),
        ("principal = 3", "must be an array of tables"),
        ("[[principals]]\nid = 'x'", "unexpected top-level key 'principals'"),
        (entry(role="admin", token_sha256=GOOD_HASH), "principal #1: key 'id' is missing"),
        (entry(id="", role="admin", token_sha256=GOOD_HASH), "key 'id': expected a non-empty"),
        (entry(id="a", token_sha256=GOOD_HASH), "\\(id 'a'\\): key 'role' is missing"),
        (entry(id="a", role="root", token_sha256=GOOD_HASH), "key 'role': unknown role 'root'"),
        (entry(id="a", role="admin"), "key 'token_sha256' is missing"),
        (entry(id="a", role="admin", token_sha256=GOOD_HASH.upper()), "64 lowercase hex"),
        (entry(id="a", role="admin", token_sha256=GOOD_HASH[:-1]), "got 63 characters"),
        (entry(id="a", role="admin", token_sha256=7), "key 'token_sha256': expected a non-empty"),
        (entry(id="a", role="admin", token="t"), "plaintext tokens are not accepted"),
        (
            entry(id="a", role="admin", token_sha265=GOOD_HASH),
            "unknown key 'token_sha265'",
        ),
        (
            entry(id="a", role="exchange", token_sha256=GOOD_HASH),
            "key 'participant_id': required for role exchange",
        ),
        (
            entry(id="a", role="exchange", participant_id="sse", token_sha256=GOOD_HASH),
            "key 'participant_id': 'sse' is not a UUID",
        ),
        (
            entry(id="a", role="exchange", participant_id=EXCHANGE_ID, exchanges=[EXCHANGE_ID])
            + f"token_sha256 = '{GOOD_HASH}'\n",
            "key 'exchanges': only an auditor",
        ),
        (
            entry(id="a", role="assessor", token_sha256=GOOD_HASH),
            "key 'id': 'a' is not a UUID \\(an assessor's id is its participant id\\)",
        ),
        (
            entry(
                id=ASSESSOR_ID,
                role="assessor",
                participant_id=EXCHANGE_ID,
                token_sha256=GOOD_HASH,
            ),
            "key 'participant_id': must equal id",
        ),
        (
            entry(id="a", role="auditor", participant_id=EXCHANGE_ID, token_sha256=GOOD_HASH),
            "key 'participant_id': not used for role auditor",
        ),
        (
            entry(id="a", role="auditor", exchanges=EXCHANGE_ID, token_sha256=GOOD_HASH),
            "key 'exchanges': expected an array",
        ),
        (
            entry(id="a", role="auditor", exchanges=["venue-1"], token_sha256=GOOD_HASH),
            "key 'exchanges': 'venue-1' is not a UUID",
        ),
        (
            entry(id="a", role="operator", participant_id=EXCHANGE_ID, token_sha256=GOOD_HASH),
            "key 'participant_id': only used for roles exchange and assessor",
        ),
        (
            entry(id="a", role="admin", token_sha256=GOOD_HASH)
            + entry(id="a", role="auditor", token_sha256=hash_token("u")),
            "principal #2 \\(id 'a'\\): key 'id': already used by principal #1",
        ),
        (
            entry(id="a", role="admin", token_sha256=GOOD_HASH)
            + entry(id="b", role="auditor", token_sha256=GOOD_HASH),
            "principal #2 \\(id 'b'\\): key 'token_sha256': the same token hash is already "
            "used by principal 'a'",
        ),
    ],
)
def test_a_malformed_file_is_refused_naming_the_entry_and_key(text: str, message: str) -> None:
    with pytest.raises(PrincipalsFileError, match=message) as raised:
        PrincipalStore.from_toml(text, source="etc/principals.toml")
    assert str(raised.value).startswith("principals file etc/principals.toml: ")


def test_an_error_never_quotes_a_token_hash() -> None:
    text = entry(id="a", role="admin", token_sha256=GOOD_HASH + "0")
    with pytest.raises(PrincipalsFileError) as raised:
        PrincipalStore.from_toml(text)
    assert GOOD_HASH not in str(raised.value)


# Dev credentials.


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dev_principals_give_one_working_token_per_role(tmp_path: Path) -> None:
    var = tmp_path / "var"
    creds = write_dev_principals(var)

    assert creds.principals_file == var / "dev-principals.toml"
    assert creds.tokens_file == var / "dev-tokens.json"
    assert not creds.reused
    assert set(creds.tokens) == set(Role)
    assert len(set(creds.tokens.values())) == len(Role)

    store = PrincipalStore.load(creds.principals_file)
    for role in Role:
        principal = store.authenticate(creds.token_for(role))
        assert principal is not None
        assert principal.role is role
        assert principal.id == creds.principal_ids[role]
    assert store.authenticate(creds.token_for(Role.EXCHANGE)) == Principal(
        "dev-exchange", Role.EXCHANGE, frozenset({DEV_EXCHANGE_PARTICIPANT_ID})
    )
    assert store.authenticate(creds.token_for(Role.ASSESSOR)) == Principal(
        DEV_ASSESSOR_PARTICIPANT_ID, Role.ASSESSOR
    )


def test_dev_files_are_readable_by_the_owner_only_and_hold_no_plaintext_in_toml(
    tmp_path: Path,
) -> None:
    creds = write_dev_principals(tmp_path)

    assert mode_of(creds.principals_file) == 0o600
    assert mode_of(creds.tokens_file) == 0o600
    principals_text = creds.principals_file.read_text(encoding="utf-8")
    for token in creds.tokens.values():
        assert token not in principals_text
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dev-principals.toml",
        "dev-tokens.json",
    ]


def test_the_dev_tokens_file_maps_roles_to_tokens_and_names_the_ids(tmp_path: Path) -> None:
    creds = write_dev_principals(tmp_path)

    saved = json.loads(creds.tokens_file.read_text(encoding="utf-8"))
    assert {role.value: saved[role.value] for role in Role} == {
        role.value: token for role, token in creds.tokens.items()
    }
    assert saved["principal_ids"]["admin"] == "dev-admin"
    assert saved["principal_ids"]["assessor"] == DEV_ASSESSOR_PARTICIPANT_ID
    assert saved["participant_ids"] == {
        "exchange": DEV_EXCHANGE_PARTICIPANT_ID,
        "assessor": DEV_ASSESSOR_PARTICIPANT_ID,
    }


def test_the_dev_participant_ids_never_change() -> None:
    # Walkthroughs and demo scripts register participants with these ids.
    assert DEV_EXCHANGE_PARTICIPANT_ID == "5654cc7f-25c3-5e11-a8fc-298a4dcc42bc"
    assert DEV_ASSESSOR_PARTICIPANT_ID == "77840f22-8b60-5dad-b457-447acc092955"


def test_dev_tokens_stay_the_same_across_restarts(tmp_path: Path) -> None:
    first = write_dev_principals(tmp_path)
    second = write_dev_principals(tmp_path)

    assert second.reused
    assert second.tokens == first.tokens


def test_edited_dev_files_are_replaced_with_new_tokens(tmp_path: Path) -> None:
    first = write_dev_principals(tmp_path)
    text = first.principals_file.read_text(encoding="utf-8")
    first.principals_file.write_text(text.replace('"admin"', '"operator"', 1), encoding="utf-8")

    second = write_dev_principals(tmp_path)

    assert not second.reused
    assert second.tokens[Role.ADMIN] != first.tokens[Role.ADMIN]
    store = PrincipalStore.load(second.principals_file)
    admin = store.authenticate(second.tokens[Role.ADMIN])
    assert admin is not None
    assert admin.role is Role.ADMIN


def test_dev_files_readable_by_others_are_replaced_with_new_tokens(tmp_path: Path) -> None:
    first = write_dev_principals(tmp_path)
    first.tokens_file.chmod(0o644)

    second = write_dev_principals(tmp_path)

    assert not second.reused
    assert second.tokens != first.tokens
    assert mode_of(second.tokens_file) == 0o600


def test_a_corrupt_tokens_file_is_replaced(tmp_path: Path) -> None:
    first = write_dev_principals(tmp_path)
    first.tokens_file.write_text("{not json", encoding="utf-8")

    second = write_dev_principals(tmp_path)

    assert not second.reused
    assert (
        json.loads(second.tokens_file.read_text(encoding="utf-8"))["admin"]
        == (second.tokens[Role.ADMIN])
    )


def test_dev_participant_ids_can_be_chosen_and_changing_them_reissues(tmp_path: Path) -> None:
    first = write_dev_principals(tmp_path)
    second = write_dev_principals(
        tmp_path, {"exchange": EXCHANGE_ID.upper(), "assessor": ASSESSOR_ID}
    )

    assert not second.reused
    store = PrincipalStore.load(second.principals_file)
    assert store.authenticate(second.tokens[Role.EXCHANGE]) == Principal(
        "dev-exchange", Role.EXCHANGE, frozenset({EXCHANGE_ID})
    )
    assert store.authenticate(second.tokens[Role.ASSESSOR]) == Principal(ASSESSOR_ID, Role.ASSESSOR)
    assert store.authenticate(first.tokens[Role.EXCHANGE]) is None


@pytest.mark.parametrize(
    ("participant_ids", "message"),
    [
        ({"auditor": EXCHANGE_ID}, "unexpected role 'auditor'"),
        ({"exchange": "sse"}, "'sse' is not a UUID"),
    ],
)
def test_bad_dev_participant_ids_are_refused(
    tmp_path: Path, participant_ids: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_dev_principals(tmp_path, participant_ids)
