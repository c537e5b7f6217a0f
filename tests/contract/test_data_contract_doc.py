"""docs/data-contract.md agrees with the contract file the ingestion service enforces and with its
dead-letter reason codes: a rule changed in one place and not the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

from driftline.services.ingestion.contract import DEFAULT_CONTRACT_PATH, Contract, Reason

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "data-contract.md").read_text()
CONTRACT = Contract.load(DEFAULT_CONTRACT_PATH)
#: Dead-letter reasons that are not contract rules (the consumer loop's own).
LOOP_REASONS = {"handler_error"}
#: How the doc names each field type of the contract language.
DOC_TYPES = {"string": "string", "number": "number", "timestamp": "RFC 3339 string"}


def _section(heading: str) -> str:
    return DOC.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def _rows(heading: str) -> dict[str, list[str]]:
    """The section's table rows whose first cell is one `code` word, by that word."""
    rows = {}
    for line in _section(heading).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z0-9_]+)`", cells[0]) if line.startswith("|") else None
        if match:
            rows[match.group(1)] = cells
    return rows


def test_the_doc_names_every_reason_code_and_no_other():
    documented = set(_rows("Reason codes"))
    assert documented - LOOP_REASONS == {r.value for r in Reason}
    assert documented >= LOOP_REASONS


def test_the_doc_lists_every_field_of_the_contract_with_its_type():
    rows = _rows("Fields (version 1)")
    assert list(rows) == CONTRACT.field_names
    for spec in CONTRACT.fields:
        assert rows[spec.name][1] == DOC_TYPES[spec.type.value], spec.name


def test_the_doc_gives_the_contracts_allowed_values_and_limits():
    rows = _rows("Fields (version 1)")
    for spec in CONTRACT.fields:
        rule = rows[spec.name][3]
        if spec.enum is not None:
            listed = re.search(r"one of `([^`]+)`", rule)
            assert listed is not None, spec.name
            assert set(listed.group(1).replace('"', "").split()) == set(spec.enum), spec.name
        if spec.max_length is not None:
            assert f"-{spec.max_length} characters" in rule, spec.name
    assert f"`max_payload_bytes` ({CONTRACT.max_payload_bytes:,})" in DOC
    (timed,) = [s for s in CONTRACT.fields if s.max_age is not None]
    assert f"`max_future_s` ({timed.max_future.total_seconds():.0f} s)" in DOC
    assert f"`max_age_s` ({timed.max_age.days} days)" in DOC
