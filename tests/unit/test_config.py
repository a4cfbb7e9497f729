"""Configuration: a secret never shows its value; the token comes from the environment, and a missing
one says where to set it."""

from __future__ import annotations

import pickle

import pytest

import runcomfy_nb as rc
from runcomfy_nb.config import Config, Secret

SENTINEL = "rc_sentinel_token_0123456789abcdef"


def test_secret_never_shows_its_value() -> None:
    secret = Secret(SENTINEL)
    assert SENTINEL not in repr(secret) and SENTINEL not in str(secret)
    assert SENTINEL not in repr(Config(token=SENTINEL))
    assert SENTINEL not in str(Config(token=SENTINEL).masked())
    assert secret.get() == SENTINEL
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_token_from_env_and_missing_token_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_TOKEN", raising=False)
    monkeypatch.setenv("RUNCOMFY_API_KEY", SENTINEL)
    monkeypatch.setenv("RUNCOMFY_BASE_URL", "http://127.0.0.1:9/")
    config = Config.from_env()
    assert config.require_token().get() == SENTINEL
    assert config.base_url == "http://127.0.0.1:9"
    monkeypatch.delenv("RUNCOMFY_API_KEY")
    with pytest.raises(rc.MissingCredentials, match="RUNCOMFY_TOKEN"):
        Config.from_env().require_token()
    with pytest.raises(rc.MissingCredentials, match="RUNCOMFY_TOKEN"):
        rc.AsyncRunComfy().deployments  # noqa: B018  (raised before any request)
