"""The clinician's web app (/app/) in a real browser against the session's real stack.

Debian's Chromium, driven by Playwright (`executable_path`; Playwright never downloads a
browser here). `make test` installs the chromium package where it can; elsewhere these tests
skip, saying why. Each step's screenshot goes to a temporary folder, or to
$SKINSCREEN_APP_SCREENSHOTS for the phone (`SKINSCREEN_APP_SCREENSHOTS=docs/app` makes the
README's images).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from skinscreen.core.clinical import SYMPTOMS
from skinscreen.core.pad_ufes import Sample, load_pad_ufes
from skinscreen.gateway.security import APP_POLICY
from tests.serving.conftest import Keys

CHROMIUM = Path("/usr/bin/chromium")
PHONE = ViewportSize(width=390, height=844)
DESKTOP = ViewportSize(width=1280, height=900)
# The worker scores a photo in well under a second; this bounds a slow, shared machine.
RESULT_TIMEOUT_MS = 60_000
# PAD-UFES-20 lesion 881, a biopsy-proven basal cell carcinoma (the one in docs/api.md).
PHOTO_STEM = "PAT_46_881_14"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package only "
            "as root with apt-get (apt-get install --no-install-recommends chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def lesion(pad_ufes_dir: Path) -> Sample:
    """A real PAD-UFES-20 photo with its patient's real answers and its biopsy's diagnosis."""
    samples = load_pad_ufes(pad_ufes_dir).samples
    return next(s for s in samples if s.image_path.stem == PHOTO_STEM)


@dataclass
class Shots:
    folder: Path
    prefix: str
    count: int = 0

    def take(self, page: Page, step: str) -> None:
        self.count += 1
        page.screenshot(path=self.folder / f"{self.prefix}-{self.count}-{step}.png", full_page=True)


def shots(tmp_path: Path, prefix: str, publish: bool) -> Shots:
    """Screenshots of each step: into $SKINSCREEN_APP_SCREENSHOTS when `publish`, else tmp."""
    folder = Path(os.environ.get("SKINSCREEN_APP_SCREENSHOTS") or tmp_path) if publish else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return Shots(folder, prefix)


def open_app(browser: Browser, gateway: str, viewport: ViewportSize, **options: Any) -> Page:
    context = browser.new_context(viewport=viewport, base_url=gateway, **options)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/")  # leads to /app/
    expect(page).to_have_url(f"{gateway}/app/")
    return page


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("Clinic API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="New screening")).to_be_visible()


def fill_answers(page: Page, lesion: Sample, age: str | None = None) -> None:
    page.locator("#file").set_input_files(lesion.image_path)
    expect(page.locator("#preview-img")).to_be_visible()
    page.get_by_label("Age (years)").fill(age if age is not None else str(lesion.clinical.age))
    page.get_by_label("Where on the body").select_option(lesion.clinical.region.value)
    answers = {True: "yes", False: "no", None: "unknown"}
    for symptom in SYMPTOMS:
        value = answers[getattr(lesion.clinical, symptom)]
        page.locator(f'input[name="{symptom}"][value="{value}"]').check()


def screening_id(page: Page) -> str:
    """The shown screening's id, from the history or the API: the app keeps it on its form."""
    value = page.locator("#diagnosis-form").get_attribute("data-screening")
    assert value
    return value


def check_result(page: Page, gateway: str, keys: Keys) -> dict[str, Any]:
    """The shown result is the API's: probability, threshold, decision, model version."""
    expect(page.locator("#decision")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    ident = screening_id(page)
    screening = httpx.get(f"{gateway}/v1/screenings/{ident}", headers=keys.clinician).json()
    result = screening["result"]
    probability = page.locator("#probability")
    assert float(probability.get_attribute("data-value") or "nan") == result["cancer_probability"]
    expect(probability).to_have_text(f"{result['cancer_probability'] * 100:.1f} %")
    expect(page.locator("#threshold")).to_have_text(f"{result['threshold'] * 100:.1f} %")
    decision = (
        "Refer to a specialist"
        if result["suspicious"]
        else "No sign of cancer found: routine follow-up"
    )
    expect(page.locator("#decision h3")).to_have_text(decision)
    expect(page.locator("#model-version")).to_contain_text(result["model_version"])
    expect(page.get_by_text("This is not a diagnosis.")).to_be_visible()
    return screening


def test_a_screening_on_a_phone(
    browser: Browser, gateway: str, keys: Keys, lesion: Sample, tmp_path: Path
) -> None:
    """Sign in, photo, the eight answers, send, the result as the API has it, a confirmed
    diagnosis recorded, the screening in the history, sign out."""
    shot = shots(tmp_path, "phone", publish=True)
    page = open_app(browser, gateway, PHONE, is_mobile=True, has_touch=True)
    shot.take(page, "sign-in")
    sign_in(page, keys.clinician_key)
    assert page.evaluate("sessionStorage.length") == 1
    # The camera and the file picker are two inputs; the camera one asks for the back camera.
    assert page.locator("#camera").get_attribute("capture") == "environment"
    fill_answers(page, lesion)
    shot.take(page, "form")
    page.get_by_role("button", name="Send for screening").click()
    screening = check_result(page, gateway, keys)
    assert screening["status"] == "done"
    assert screening["clinical"] == lesion.clinical.model_dump(mode="json")
    assert screening["model"] == "skinscreen-fusion"
    if screening["result"]["diagnoses"]:
        expect(page.locator("#diagnoses tbody tr")).to_have_count(6)
    shot.take(page, "result")

    page.get_by_label("Diagnosis", exact=True).select_option(lesion.diagnostic)
    page.get_by_label("Biopsy (histopathology)").check()
    page.get_by_label("Patient id (optional, pseudonymous)").fill(lesion.patient_id)
    page.get_by_role("button", name="Record diagnosis").click()
    expect(page.locator("#diagnosis-saved")).to_contain_text("Recorded: Basal cell carcinoma")
    recorded = httpx.get(
        f"{gateway}/v1/screenings/{screening['id']}/diagnosis", headers=keys.clinician
    ).json()
    assert (recorded["diagnosis"], recorded["confirmed_by"], recorded["patient_id"]) == (
        lesion.diagnostic,
        "histopathology",
        lesion.patient_id,
    )
    shot.take(page, "diagnosis")

    page.get_by_role("button", name="History").click()
    item = page.locator(f'.history-item[data-id="{screening["id"]}"]')
    expect(item).to_be_visible()
    expect(item).to_contain_text(f"{screening['result']['cancer_probability'] * 100:.1f} %")
    # Newest first: the clinic's newest screening is the list's first.
    newest = httpx.get(f"{gateway}/v1/screenings?limit=1", headers=keys.clinician).json()
    expect(page.locator(".history-item").first).to_have_attribute(
        "data-id", newest["items"][0]["id"]
    )
    shot.take(page, "history")
    item.click()
    check_result(page, gateway, keys)
    expect(page.locator("#diagnosis-saved")).to_contain_text("Basal cell carcinoma")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Clinic API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_refusals_on_a_desktop(
    browser: Browser, gateway: str, keys: Keys, lesion: Sample, tmp_path: Path
) -> None:
    """A refused key and a refused answer show the API's words by their field; corrected, the
    same form screens."""
    shot = shots(tmp_path, "desktop", publish=False)
    page = open_app(browser, gateway, DESKTOP)
    page.get_by_label("Clinic API key").fill("sk_live_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#api-key-error")).to_contain_text("This key was refused")
    sign_in(page, keys.clinician_key)

    # The number input says max=120, but does not stop a typed 200 (the form is novalidate:
    # the API is the one judge of an answer, and the app shows its words).
    assert page.get_by_label("Age (years)").get_attribute("max") == "120"
    fill_answers(page, lesion, age="200")
    shot.take(page, "form")
    page.get_by_role("button", name="Send for screening").click()
    refused = httpx.post(
        f"{gateway}/v1/screenings",
        headers=keys.clinician,
        files={"image": (lesion.image_path.name, lesion.image_path.read_bytes(), "image/jpeg")},
        data={"clinical": lesion.clinical.model_copy(update={"age": 200}).model_dump_json()},
    )
    assert refused.status_code == 422
    [message] = [e["msg"] for e in refused.json()["detail"] if e["loc"][-1] == "age"]
    expect(page.locator("#age-error")).to_have_text(message)
    expect(page.get_by_label("Age (years)")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Age (years)")).to_be_focused()
    shot.take(page, "refused")

    page.get_by_label("Age (years)").fill(str(lesion.clinical.age))
    page.get_by_role("button", name="Send for screening").click()
    check_result(page, gateway, keys)
    shot.take(page, "result")


def test_the_photo_only_model_hides_the_questions(
    browser: Browser, gateway: str, keys: Keys
) -> None:
    """Where the image-only model is served, choosing it hides the eight questions."""
    page = open_app(browser, gateway, PHONE, is_mobile=True)
    sign_in(page, keys.clinician_key)
    models = page.locator("#model option")
    names = models.evaluate_all("options => options.map(o => o.value)")
    assert names[0] == "skinscreen-fusion"
    expect(page.locator("#questions")).to_be_visible()
    if "skinscreen-dermoscopy" not in names:
        pytest.skip("skinscreen-dermoscopy is not served by this stack")
    page.get_by_label("Model").select_option("skinscreen-dermoscopy")
    expect(page.locator("#questions")).to_be_hidden()


def test_the_app_is_served_with_its_own_policy(gateway: str) -> None:
    """`/` leads to /app/; the app's files load only from this origin; the API keeps its own."""
    root = httpx.get(f"{gateway}/")
    assert (root.status_code, root.headers["location"]) == (307, "/app/")
    for path, kind in (
        ("/app/", "text/html"),
        ("/app/app.js", "javascript"),
        ("/app/app.css", "css"),
    ):
        answer = httpx.get(f"{gateway}{path}")
        assert answer.status_code == 200, path
        assert kind in answer.headers["content-type"]
        policy = answer.headers["content-security-policy"]
        assert policy == APP_POLICY, path
    assert (
        httpx.get(f"{gateway}/healthz")
        .headers["content-security-policy"]
        .startswith("default-src 'none'")
    )
