"""The ingestion settings: the de-duplication horizon must cover the contract's event-age window."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from driftline.services.ingestion.config import DEFAULT_DEDUP_TTL_S, Settings, replay_window
from driftline.services.ingestion.contract import Contract


def _contract_file(tmp_path: Path, **fields: dict[str, Any]) -> Path:
    path = tmp_path / "contract.yaml"
    document = {"contract": "t", "version": "1", "max_payload_bytes": 100, "fields": fields}
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(autouse=True)
def _no_ingestion_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTLINE_INGESTION_DEDUP_TTL_S", raising=False)
    monkeypatch.delenv("DRIFTLINE_INGESTION_CONTRACT_PATH", raising=False)


def test_the_default_horizon_covers_the_default_contracts_replay_window() -> None:
    found = replay_window(Contract.load())
    assert found is not None
    spec, window = found
    assert spec.name == "event_time"
    assert window == timedelta(days=7, minutes=5)  # max_age_s + max_future_s of transaction.v1
    assert Settings().dedup_ttl_s == DEFAULT_DEDUP_TTL_S >= window.total_seconds()


def test_a_horizon_shorter_than_the_contracts_event_age_window_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRIFTLINE_INGESTION_DEDUP_TTL_S", "86400")
    with pytest.raises(ValidationError) as failure:
        Settings()
    message = str(failure.value)
    assert "DRIFTLINE_INGESTION_DEDUP_TTL_S" in message
    assert "DRIFTLINE_INGESTION_CONTRACT_PATH" in message
    assert "max_age_s 604800 + max_future_s 300" in message


def test_a_horizon_equal_to_the_window_is_enough(tmp_path: Path) -> None:
    path = _contract_file(tmp_path, at={"type": "timestamp", "max_age_s": 100, "max_future_s": 20})
    assert Settings(contract_path=path, dedup_ttl_s=120).dedup_ttl_s == 120
    with pytest.raises(ValidationError, match="field 'at' max_age_s 100 \\+ max_future_s 20"):
        Settings(contract_path=path, dedup_ttl_s=119)


def test_the_window_is_the_widest_age_plus_future_skew_of_any_timestamp_field(tmp_path: Path) -> None:
    path = _contract_file(
        tmp_path,
        sent={"type": "timestamp", "max_age_s": 100, "max_future_s": 100},
        seen={"type": "timestamp", "max_age_s": 160},
        name={"type": "string"},
    )
    found = replay_window(Contract.load(path))
    assert found is not None
    assert (found[0].name, found[1]) == ("sent", timedelta(seconds=200))
    # Without max_future_s a field's window is its max_age_s alone.
    path = _contract_file(tmp_path, seen={"type": "timestamp", "max_age_s": 160})
    assert replay_window(Contract.load(path)) == (Contract.load(path).fields[0], timedelta(seconds=160))


def test_a_contract_without_an_age_window_accepts_any_horizon(tmp_path: Path) -> None:
    path = _contract_file(tmp_path, at={"type": "timestamp", "max_future_s": 20})
    assert replay_window(Contract.load(path)) is None
    assert Settings(contract_path=path, dedup_ttl_s=1).dedup_ttl_s == 1


def test_a_contract_path_that_cannot_be_loaded_is_a_settings_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ValidationError, match=r"nowhere\.yaml cannot be loaded"):
        Settings(contract_path=missing)
