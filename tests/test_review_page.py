"""The review page in headless Chromium: relabel (to an existing and a new class), exclude by keyboard, a bulk action,
undo, reload, two people at once, images by index, and the API key."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import browser_page
from test_review import KEY, review_data
from test_serve import start_server

from imgclf.review.data_source import DataReview, open_data_review
from imgclf.serve.review_server import create_review_source_app


@pytest.fixture
def source(tmp_path: Path) -> DataReview:
    return open_data_review(review_data(tmp_path), corrections=tmp_path / "corrections.csv")


@pytest.fixture
def url(source: DataReview) -> Iterator[str]:
    address, server, thread = start_server(create_review_source_app(source))
    yield address
    server.should_exit = True
    thread.join(10)


def card(page: object, key: str) -> object:
    return page.locator(f"article[data-key='{key}']")  # type: ignore[attr-defined]


def state(page: object, key: str, text: str) -> None:
    """Wait until the card of ``key`` says ``text`` (empty: no decision)."""
    page.wait_for_function(  # type: ignore[attr-defined]
        "([key, text]) => document.querySelector(`article[data-key='${key}'] .state`)?.textContent === text",
        arg=[key, text])


def decided(path: Path) -> dict[str, tuple[str, str]]:
    with path.open(newline="") as handle:
        return {row["path"]: (row["action"], row["label"]) for row in csv.DictReader(handle)}


def test_relabel_exclude_bulk_undo_and_reload_in_a_browser(url: str, source: DataReview, chromium: str) -> None:
    with browser_page(chromium) as (page, requests):
        page.goto(url + "/")
        page.wait_for_selector("article[data-key='green/copied.png']")
        assert page.locator("section.kind h2").first.inner_text() == "duplicate across labels (2)"
        copied = card(page, "green/copied.png")
        copied.locator("select.label-choice").select_option("red")
        copied.locator("button[data-action='relabel']").click()
        state(page, "green/copied.png", "relabel \u2192 red")
        card(page, "blue/again.png").locator(".reason").click()  # choose the card, then decide by keyboard
        page.keyboard.press("2")
        state(page, "blue/again.png", "exclude")
        original = card(page, "red/000.png")
        original.locator("select.label-choice").select_option(label="new class...")
        original.locator("input.new-label").fill("maroon")
        original.locator("button[data-action='relabel']").click()
        state(page, "red/000.png", "relabel \u2192 maroon")
        page.locator("button.bulk[data-name='exclude-broken']").click()
        state(page, "red/broken.png", "exclude")
        assert "4 decided" in page.inner_text("#summary")
        page.select_option("#kind-filter", "duplicate")
        assert page.locator("article:visible").count() == 2 and page.locator("section.kind:visible").count() == 1
        page.select_option("#kind-filter", "")
        page.keyboard.press("u")  # undo the bulk action
        state(page, "red/broken.png", "")
        page.locator("#undo").click()  # and the new class
        state(page, "red/000.png", "")
        page.wait_for_function(  # the photos load (by number: checked below)
            "() => [...document.querySelectorAll('img.photo')].some((i) => i.complete && i.naturalWidth > 0)")
        page.reload()
        state(page, "green/copied.png", "relabel \u2192 red")
        state(page, "blue/again.png", "exclude")
        assert "2 decided, 4 left" in page.inner_text("#summary")
    images = [address for address in requests if "/image/" in address]
    assert images and all(re.fullmatch(re.escape(url) + r"/v1/review/image/\d+", address) for address in images)
    assert decided(source.corrections) == {"green/copied.png": ("relabel", "red"), "blue/again.png": ("exclude", "")}


def test_two_people_on_one_page_see_and_keep_each_others_decisions(url: str, source: DataReview,
                                                                    chromium: str) -> None:
    with browser_page(chromium) as (first, _):
        second = first.context.browser.new_page()
        for page in (first, second):
            page.goto(url + "/")
            page.wait_for_selector("article[data-key='blue/again.png']")
        card(first, "blue/again.png").locator("button[data-action='exclude']").click()
        card(second, "blue/000.png").locator("button[data-action='keep']").click()
        state(first, "blue/again.png", "exclude")
        state(second, "blue/000.png", "keep")
        state(first, "blue/000.png", "keep")  # the other person's decision arrives without a reload
        state(second, "blue/again.png", "exclude")
    assert decided(source.corrections) == {"blue/again.png": ("exclude", ""), "blue/000.png": ("keep", "")}


def test_the_page_asks_for_the_api_key_and_loads_images_with_it(source: DataReview, chromium: str) -> None:
    address, server, thread = start_server(create_review_source_app(source, api_key=KEY))
    try:
        with browser_page(chromium) as (page, _):
            page.goto(address + "/")
            page.wait_for_selector("#key-form:not([hidden])")
            assert "API key" in page.inner_text("#error")
            page.fill("#key", KEY)
            page.click("#key-form button")
            page.wait_for_selector("article[data-key='blue/again.png']")
            page.wait_for_function("() => [...document.querySelectorAll('img.photo')]"
                                   ".some((i) => i.complete && i.naturalWidth > 0)")
            card(page, "blue/again.png").locator("button[data-action='keep']").click()
            state(page, "blue/again.png", "keep")
    finally:
        server.should_exit = True
        thread.join(10)
    assert decided(source.corrections) == {"blue/again.png": ("keep", "")}
