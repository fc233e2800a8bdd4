"""Phone numbers: Korean formats to E.164; 112/119 only where an emergency number is asked for.

The numbers here are in the 010-0000-xxxx block, which phonenumbers accepts and no real person
is reachable on; nothing is ever sent to them outside the sim/fake backends.
"""

import pytest

from jikimi_host.relay.numbers import NumberError, is_emergency, normalize, normalize_emergency


@pytest.mark.parametrize(
    "text, e164",
    [
        ("010-0000-0001", "+821000000001"),
        ("01000000001", "+821000000001"),
        ("+82 10 0000 0001", "+821000000001"),
        ("010 0000 0001", "+821000000001"),
        ("02-123-4567", "+8221234567"),  # a Seoul landline
        ("+1 202 555 0100", "+12025550100"),  # an international guardian (US fictional range)
    ],
)
def test_korean_and_international_formats_become_e164(text, e164):
    assert normalize("guardians[0].number", text) == e164


@pytest.mark.parametrize("text", ["010-12", "abc", "0100000000000000", "+82"])
def test_an_invalid_number_is_rejected_naming_the_entry(text):
    with pytest.raises(NumberError) as err:
        normalize("guardians[2].number", text)
    assert str(err.value) == f'guardians[2].number: "{text}" is not a valid phone number in KR'


@pytest.mark.parametrize("text", [None, "", "   ", 1012345678])
def test_a_missing_or_non_text_number_is_rejected(text):
    with pytest.raises(NumberError, match=r"^guardians\[0\]\.number: "):
        normalize("guardians[0].number", text)


@pytest.mark.parametrize("text", ["112", "119", "1-1-2"])
def test_an_emergency_number_is_not_a_guardian(text):
    with pytest.raises(NumberError, match="is an emergency number"):
        normalize("guardians[1].number", text)


@pytest.mark.parametrize("text, digits", [("112", "112"), ("119", "119"), (" 112 ", "112")])
def test_emergency_numbers_are_accepted_where_asked_for(text, digits):
    assert normalize_emergency("emergency_number", text) == digits


@pytest.mark.parametrize("text", ["113", "010-0000-0001", "911", "", "police"])
def test_anything_else_is_not_an_emergency_number(text):
    with pytest.raises(NumberError, match=r"^emergency_number: .* not an emergency number"):
        normalize_emergency("emergency_number", text)


@pytest.mark.parametrize("number", ["112", "119", "+82112", "+82 112", "1-1-2"])
def test_is_emergency_recognises_every_spelling_of_112(number):
    assert is_emergency(number)


@pytest.mark.parametrize("number", ["+821000000001", "010-0000-0001", "+12025550100", "", "abc"])
def test_is_emergency_is_false_for_subscriber_numbers(number):
    assert not is_emergency(number)
