"""What the fault tests share: a client posting real photos under load, recording every answer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from tests.serving.conftest import Database, Photo, submit

# A request during an outage is answered within this (the gateway's own bounds are ~1-2 s);
# generous, so a loaded machine cannot make it flaky.
FAIL_FAST_S = 5.0


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer (connection refused or reset, client timeout)
    seconds: float
    retry_after: str | None
    body: str


class Load:
    """One client posting real photos back to back, from a thread, until stopped."""

    def __init__(
        self, url: str, photos: list[Photo], headers: dict[str, str], timeout_s: float = 30
    ) -> None:
        self.url = url
        # The API key it sends.
        self.headers = headers
        self.photos = photos
        self.timeout_s = timeout_s
        # Ids answered 202, in order, and every answer that was not a 202.
        self.accepted: list[str] = []
        self.refused: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def refused_with(self, status: int) -> list[Answer]:
        return [answer for answer in list(self.refused) if answer.status == status]

    def _run(self) -> None:
        with httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout_s
        ) as client:
            index = 0
            while not self._stop.is_set():
                photo = self.photos[index % len(self.photos)]
                index += 1
                started = time.monotonic()
                try:
                    response = submit(client, photo)
                except httpx.HTTPError as exc:
                    self.refused.append(Answer(0, time.monotonic() - started, None, repr(exc)))
                    time.sleep(0.05)  # a gateway that is down refuses at once
                    continue
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                else:
                    self.refused.append(
                        Answer(
                            response.status_code,
                            time.monotonic() - started,
                            response.headers.get("Retry-After"),
                            response.text,
                        )
                    )


def count_done(database: Database, ids: list[str]) -> int:
    count: int = database.value(
        "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[]) AND status = 'done'", ids
    )
    return count


def unfinished(database: Database, ids: list[str]) -> int:
    """Accepted screenings neither done nor failed with a reason."""
    count: int = database.value(
        "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[])"
        " AND NOT (status = 'done' OR (status = 'failed' AND failure_reason IS NOT NULL))",
        ids,
    )
    missing = len(set(ids)) - database.value(
        "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[])", ids
    )
    return count + missing


def assert_failed_fast(answers: list[Answer]) -> None:
    """Each refusal a 503 with Retry-After, answered within FAIL_FAST_S: no 500, no hang."""
    assert answers, "no request was refused"
    wrong = [answer for answer in answers if answer.status != 503 or not answer.retry_after]
    assert not wrong, wrong[:5]
    slow = [answer for answer in answers if answer.seconds > FAIL_FAST_S]
    assert not slow, slow[:5]


def readiness(url: str) -> tuple[int, dict[str, bool]]:
    try:
        response = httpx.get(f"{url}/readyz", timeout=10)
    except httpx.HTTPError:
        return 0, {}
    checks = response.json()["checks"]
    return response.status_code, {name: check["ok"] for name, check in checks.items()}
