"""Value objects: the USCC check character, foreign identities, money and enumerations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.errors import InvalidArgument
from ledger.domain.values import (
    INT64_MAX,
    USCC_ALPHABET,
    Category,
    Classification,
    Money,
    NamedEnum,
    PartyIdentifier,
    Right,
    covers,
    uscc_check_character,
    validate_uscc,
)

# The public example of GB 32100-2015, valid as printed.
PUBLIC_EXAMPLE = "91350100M000100Y43"
FORBIDDEN_LETTERS = "IOSVZ"


def reference_check_character(first17: str) -> str:
    """GB 32100-2015 written out independently: weights are 3^(i-1) mod 31, the check
    value is 31 - (weighted sum mod 31), where 31 stands for 0."""
    value = {ch: i for i, ch in enumerate("0123456789ABCDEFGHJKLMNPQRTUWXY")}
    total = sum(value[ch] * pow(3, i, 31) for i, ch in enumerate(first17))
    check = 31 - total % 31
    return "0123456789ABCDEFGHJKLMNPQRTUWXY"[0 if check == 31 else check]


def violation(error: pytest.ExceptionInfo[InvalidArgument]) -> tuple[str, str]:
    (only,) = error.value.violations
    return only.field, only.description


# --- USCC -------------------------------------------------------------------------


def test_the_uscc_alphabet_is_digits_and_letters_without_i_o_s_v_z() -> None:
    assert len(USCC_ALPHABET) == 31
    assert not set(FORBIDDEN_LETTERS) & set(USCC_ALPHABET)
    assert set(USCC_ALPHABET) == set("0123456789ABCDEFGHJKLMNPQRTUWXY")


def test_the_public_example_of_the_standard_is_accepted() -> None:
    assert validate_uscc(PUBLIC_EXAMPLE) == PUBLIC_EXAMPLE
    assert uscc_check_character(PUBLIC_EXAMPLE[:17]) == "3"


@pytest.mark.parametrize(
    "first17",
    [
        "91350100M000100Y4",
        "91110000600037341",
        "11100000000013127",
        "52310000MJ0000000",
        "00000000000000000",
        "9Y123456ABCDEFGHJ",
        "YY999999YYYYYYYYY",
    ],
)
def test_the_check_character_follows_the_standards_weights(first17: str) -> None:
    assert uscc_check_character(first17) == reference_check_character(first17)


def test_a_check_value_of_zero_is_written_as_the_digit_zero() -> None:
    assert uscc_check_character("00000000000000000") == "0"
    assert validate_uscc("000000000000000000") == "000000000000000000"


@pytest.mark.parametrize("position", range(18))
def test_changing_any_single_character_of_a_valid_code_is_rejected(position: int) -> None:
    for replacement in USCC_ALPHABET + FORBIDDEN_LETTERS + "a-":
        if replacement == PUBLIC_EXAMPLE[position]:
            continue
        altered = PUBLIC_EXAMPLE[:position] + replacement + PUBLIC_EXAMPLE[position + 1 :]
        with pytest.raises(InvalidArgument) as caught:
            validate_uscc(altered, "party.uscc")
        assert violation(caught)[0] == "party.uscc", altered


@pytest.mark.parametrize("code", ["", "91350100M000100Y4", "91350100M000100Y433", "9" * 40])
def test_a_uscc_of_the_wrong_length_is_rejected_naming_the_field(code: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_uscc(code, "party.uscc")
    field, description = violation(caught)
    assert field == "party.uscc"
    assert "18 characters" in description


@pytest.mark.parametrize("letter", list(FORBIDDEN_LETTERS))
def test_a_uscc_with_a_forbidden_letter_is_rejected_naming_the_field(letter: str) -> None:
    code = PUBLIC_EXAMPLE[:9] + letter + PUBLIC_EXAMPLE[10:]
    with pytest.raises(InvalidArgument) as caught:
        validate_uscc(code, "party.uscc")
    field, description = violation(caught)
    assert field == "party.uscc"
    assert "no I, O, S, V, Z" in description


def test_a_uscc_in_lower_case_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        validate_uscc(PUBLIC_EXAMPLE.lower())


def test_a_uscc_with_letters_in_the_division_code_is_rejected() -> None:
    body = "91A50100M000100Y4"
    with pytest.raises(InvalidArgument) as caught:
        validate_uscc(body + uscc_check_character(body))
    assert "numeric administrative division code" in violation(caught)[1]


def test_a_wrong_check_character_is_rejected_with_the_expected_one() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_uscc(PUBLIC_EXAMPLE[:17] + "4")
    field, description = violation(caught)
    assert field == "uscc"
    assert "'3'" in description


_char = st.sampled_from(USCC_ALPHABET)
_digit = st.sampled_from("0123456789")
_body = st.builds(
    lambda head, division, organisation: "".join(head) + "".join(division) + "".join(organisation),
    st.lists(_char, min_size=2, max_size=2),
    st.lists(_digit, min_size=6, max_size=6),
    st.lists(_char, min_size=9, max_size=9),
)


@given(_body)
def test_every_well_formed_body_with_its_check_character_is_accepted(body: str) -> None:
    check = uscc_check_character(body)
    assert check == reference_check_character(body)
    assert validate_uscc(body + check) == body + check


@given(_body, _char)
def test_every_other_check_character_is_rejected(body: str, check: str) -> None:
    if check == uscc_check_character(body):
        return
    with pytest.raises(InvalidArgument):
        validate_uscc(body + check)


# --- party identities -----------------------------------------------------------------


def test_a_domestic_party_is_keyed_by_its_uscc() -> None:
    party = PartyIdentifier.domestic(PUBLIC_EXAMPLE)
    assert party.key == f"USCC:{PUBLIC_EXAMPLE}"
    assert PartyIdentifier.from_json(party.to_json()) == party


def test_a_domestic_party_with_a_bad_uscc_names_the_given_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        PartyIdentifier.domestic(PUBLIC_EXAMPLE[:17] + "4", "party.uscc")
    assert violation(caught)[0] == "party.uscc"


@pytest.mark.parametrize("registry_number", ["HRB 12345", "C-1/2.3", "a" * 64, "7"])
def test_a_foreign_party_is_keyed_by_country_and_registry_number(registry_number: str) -> None:
    party = PartyIdentifier.foreign("DE", registry_number)
    assert party.key == f"DE:{registry_number}"
    assert party.uscc is None
    assert PartyIdentifier.from_json(party.to_json()) == party


@pytest.mark.parametrize("country", ["de", "DEU", "D", "", "D1", "CN"])
def test_a_foreign_party_with_a_bad_country_is_rejected_naming_the_field(country: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        PartyIdentifier.foreign(country, "HRB 12345")
    assert violation(caught)[0] == "party.foreign.country"


def test_a_chinese_organisation_must_use_its_uscc() -> None:
    with pytest.raises(InvalidArgument) as caught:
        PartyIdentifier.foreign("CN", "110000123")
    assert "USCC" in violation(caught)[1]


@pytest.mark.parametrize("registry_number", ["", " leading", "a" * 65, "semi;colon", "-x"])
def test_a_foreign_party_with_a_bad_registry_number_is_rejected_naming_the_field(
    registry_number: str,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        PartyIdentifier.foreign("DE", registry_number)
    assert violation(caught)[0] == "party.foreign.registry_number"


# --- money ---------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, 1, 1_250_000, INT64_MAX])
def test_money_accepts_non_negative_int64_minor_units(amount: int) -> None:
    money = Money.parse("CNY", amount, "price")
    assert money == Money("CNY", amount)
    assert Money.from_json(money.to_json()) == money


def test_negative_money_is_rejected_naming_the_amount_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        Money.parse("CNY", -1, "price")
    assert violation(caught) == ("price.amount_minor", "must not be negative")


def test_money_beyond_int64_is_rejected_naming_the_amount_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        Money.parse("CNY", INT64_MAX + 1, "list_price")
    assert violation(caught) == ("list_price.amount_minor", "exceeds int64")


@pytest.mark.parametrize("amount", [1.5, "100", True, None])
def test_money_that_is_not_an_integer_is_rejected(amount: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Money.parse("CNY", amount, "price")  # type: ignore[arg-type]
    assert violation(caught)[0] == "price.amount_minor"


@pytest.mark.parametrize("currency", ["cny", "CN", "CNYY", "", "C1Y", "人民币"])
def test_money_with_a_bad_currency_is_rejected_naming_the_currency_field(currency: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Money.parse(currency, 100, "price")
    assert violation(caught)[0] == "price.currency"


# --- enumerations ----------------------------------------------------------------------


def test_an_enum_parses_its_member_names_and_members() -> None:
    assert Category.parse("MEDICAL", "category") is Category.MEDICAL
    assert Category.parse(Category.PUBLIC, "category") is Category.PUBLIC


@pytest.mark.parametrize("value", ["medical", "MEDICINE", "", " MEDICAL", "0"])
def test_an_unknown_enum_value_is_rejected_naming_the_field_and_the_allowed_values(
    value: str,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Category.parse(value, "listing.category")
    field, description = violation(caught)
    assert field == "listing.category"
    assert "MEDICAL" in description
    assert "GEOSPATIAL" in description


def test_an_unknown_value_in_an_enum_set_names_its_index() -> None:
    with pytest.raises(InvalidArgument) as caught:
        Right.parse_set(["HOLD", "OWN"], "rights")
    assert violation(caught)[0] == "rights[1]"


def test_an_empty_enum_set_is_rejected_unless_allowed() -> None:
    with pytest.raises(InvalidArgument) as caught:
        Right.parse_set([], "rights")
    assert violation(caught)[0] == "rights"
    assert Right.parse_set([], "rights", allow_empty=True) == frozenset()


def test_an_enum_set_drops_duplicates() -> None:
    assert Right.parse_set(["HOLD", "HOLD", "OPERATE"], "rights") == {Right.HOLD, Right.OPERATE}


def test_every_enum_value_is_its_name() -> None:
    for enum in NamedEnum.__subclasses__():
        for member in enum:
            assert member.value == member.name


def test_classifications_are_ranked_general_important_core() -> None:
    ranks = [
        c.rank for c in (Classification.GENERAL, Classification.IMPORTANT, Classification.CORE)
    ]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 3


def test_an_invalid_argument_needs_a_field_violation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        InvalidArgument()


# --- time intervals -----------------------------------------------------------------


def test_covers_is_a_half_open_interval() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=1)
    assert covers(start, end, start)
    assert not covers(start, end, end)
    assert not covers(start, end, start - timedelta(microseconds=1))
    assert covers(None, None, start)
    assert covers(None, end, start - timedelta(days=400))
    assert covers(start, None, end + timedelta(days=400))
