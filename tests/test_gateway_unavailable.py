"""Which errors the gateway answers as 503 (a server is down), and what it says."""

from __future__ import annotations

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from skinscreen.gateway.unavailable import (
    BROKER_DOWN,
    DATABASE_DOWN,
    UNAVAILABLE_ERRORS,
    detail_for,
)


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        # A PostgreSQL SIGKILLed mid-statement: asyncpg finds the connection it gets back
        # still mid-operation. Was a bare 500 under load (tests/serving/test_database_restart).
        (
            asyncpg.InternalClientError(
                "cannot switch to state 15; another operation is in progress"
            ),
            DATABASE_DOWN,
        ),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-statement"), DATABASE_DOWN),
        (
            asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
            DATABASE_DOWN,
        ),
        (RedisConnectionError("Connection refused"), BROKER_DOWN),
    ],
)
def test_a_server_going_away_is_a_503_naming_it(error: Exception, detail: str) -> None:
    assert isinstance(error, UNAVAILABLE_ERRORS)
    assert detail_for(error) == detail


def test_a_programming_error_is_not_taken_for_an_outage() -> None:
    assert not isinstance(ValueError("a bug"), UNAVAILABLE_ERRORS)
    assert not isinstance(asyncpg.exceptions.UndefinedColumnError("a bug"), UNAVAILABLE_ERRORS)
