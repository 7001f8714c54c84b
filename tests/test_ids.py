"""One rule for ids in every command: hex in either case, a unique prefix of at least
eight digits, and a message that says which of those was not met."""

from __future__ import annotations

import pytest

from twinledger.errors import BadRequest, TwinledgerError
from twinledger.services.access import by_id

IDS = ["3fa9c0de11", "3fa9c0de22", "77aa0000ff"]


def test_an_id_in_full_or_in_part_in_either_case():
    assert by_id(IDS, "77aa0000ff", str, "document") == "77aa0000ff"
    assert by_id(IDS, "77AA0000", str, "document") == "77aa0000ff", "uppercase hex, as a printout shows it"
    assert by_id(IDS, " 3fa9c0de2 ", str, "document") == "3fa9c0de22"


@pytest.mark.parametrize(("given", "error", "complaint"), [
    ("3fa9c0", BadRequest, "'3fa9c0' is too short for a document id: give at least 8 of its digits"),
    ("3fa9c0de", TwinledgerError, "'3fa9c0de' starts 2 document ids"),
    ("00000000", TwinledgerError, "'00000000' is no document id, nor the start of one"),
])  # fmt: skip
def test_each_way_an_id_can_miss_has_its_own_line(given, error, complaint):
    with pytest.raises(error) as caught:
        by_id(IDS, given, str, "document")
    assert caught.value.message == complaint
