"""`ownllm config` prints the effective configuration without its secrets."""

from __future__ import annotations

import json

import pytest

from ownllm.cli import main
from ownllm.cli.config import mask_credentials


def test_config_masks_the_database_password_and_the_admin_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OWNLLM_HOME", str(tmp_path))
    monkeypatch.setenv("OWNLLM_DATABASE_URL", "postgresql+psycopg://ownllm:hunter2@db:5432/ownllm")
    monkeypatch.setenv("OWNLLM_ADMIN_KEY", "sk-admin-hunter3")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "hunter3" not in out
    values = json.loads(out)
    assert values["store"]["database_url"] == "postgresql+psycopg://ownllm:***@db:5432/ownllm"
    assert values["auth"]["admin_key"] == "***"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://user:secret@host/db", "postgresql+psycopg://user:***@host/db"),
        ("postgresql://u:p@ss@host:5432/db?sslmode=require", "postgresql://u:***@host:5432/db?sslmode=require"),
        ("postgresql://host/db?user=u&password=secret&x=1", "postgresql://host/db?user=u&password=***&x=1"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:////home/me/.ownllm/ownllm.db", "sqlite:////home/me/.ownllm/ownllm.db"),
    ],
)  # fmt: skip
def test_mask_credentials(url, expected):
    assert mask_credentials(url) == expected
