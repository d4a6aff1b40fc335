"""The dashboard in a real headless Chromium, served by a real `batchy serve` on a real redis-server.

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` Python package
(the `test` extra); Playwright drives the system browser, so `playwright install` is never needed.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.request
import zlib
from datetime import datetime, timedelta, timezone

import pytest
import yaml

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.slow  # a real browser and a real service: seconds per test

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
LAPTOP = {"width": 1366, "height": 768}
# The CSS colours of the status badges and of a stale "last success" cell.
COLOURS = {
    "new": (107, 114, 128),
    "open": (37, 99, 235),
    "success": (21, 128, 61),
    "failed": (220, 38, 38),
}
STALE_BACKGROUND = (254, 243, 199)
XSS = '<img src=x onerror="window.__xss = 1">'


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=LAPTOP)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


def post(service, path, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(service.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def rgb(css: str) -> tuple[int, ...]:
    """Return the numbers of a computed 'rgb(r, g, b)' colour."""
    return tuple(int(part) for part in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def decode_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Return width, height, unfiltered rows and bytes per pixel of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, previous = [], bytes(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows, bpp


def pixel_stats(png: bytes) -> tuple[int, float, set]:
    """Return (distinct colours, share of non-white pixels, the set of colours) of a screenshot."""
    width, height, rows, bpp = decode_png(png)
    colours, non_white = set(), 0
    for row in rows:
        for x in range(0, width * bpp, bpp):
            pixel = row[x:x + 3]
            colours.add(pixel)
            if pixel != b"\xff\xff\xff":
                non_white += 1
    return len(colours), non_white / (width * height), {tuple(c) for c in colours}


def test_dashboard_rows_colours_and_screenshot(service, real_redis, write_cfg, page, tmp_path):
    # orders last succeeded two hours ago by Redis' clock (the service's), an hour past its
    # stale_after_hours: state as a workflow file may carry it, so no test waits for time to pass.
    seconds, _ = real_redis.time()
    ended = datetime.fromtimestamp(int(seconds), timezone.utc) - timedelta(hours=2)
    done = {"status": "success", "batch_id": int(ended.timestamp()) - 300,
            "batch_start": (ended - timedelta(minutes=5)).isoformat(), "batch_end": ended.isoformat(),
            "records_processed": 1500, "message": "ok"}
    write_cfg("orders", yaml.safe_dump({".batchy": {"stale_after_hours": 1},
                                        "orders_extract": {"src": XSS, **done}, "orders_load": done}))
    write_cfg("nightly", "dump: {}\n")
    write_cfg("fresh", "never_run: {}\n")
    write_cfg("running", "long_job: {}\n")
    for wf in ("wf1", "orders", "nightly", "fresh", "running"):
        post(service, f"/load_cfg/{wf}")
    post(service, "/open_batch/wf1")
    post(service, "/close_batch/wf1", {"records_processed": 3})
    post(service, "/open_batch/nightly")
    post(service, "/fail_batch/nightly", {"message": XSS})
    post(service, "/open_batch/running")

    response = page.goto(service.url + "/")
    assert response.status == 200
    page.wait_for_selector("tr.job-row")
    rows = page.eval_on_selector_all("tr.job-row", """rows => rows.map(r => ({
        workflow: r.dataset.workflow, job: r.dataset.job, status: r.dataset.status,
        stale: r.dataset.stale || "", badge: r.querySelector(".status").innerText,
        colour: getComputedStyle(r.querySelector(".status")).backgroundColor,
        since: getComputedStyle(r.querySelector("td.since")).backgroundColor,
        message: r.querySelector("td.message").innerText, records: r.querySelector("td.num").innerText}))""")
    by_job = {(row["workflow"], row["job"]): row for row in rows}

    expected = {
        ("fresh", "never_run"): "new",
        ("nightly", "dump"): "failed",
        ("orders", "orders_extract"): "success",
        ("orders", "orders_load"): "success",
        ("running", "long_job"): "open",
        ("wf1", "s_extract"): "success",
        ("wf1", "s_load"): "success",
    }
    assert {key: row["status"] for key, row in by_job.items()} == expected
    # Workflows that need attention (a failed job here: nightly) come first, then by name.
    order = list(dict.fromkeys(row["workflow"] for row in rows))
    assert order[0] == "nightly" and order[1:] == sorted(order[1:]), order
    for key, status in expected.items():
        assert by_job[key]["badge"] == status
        assert rgb(by_job[key]["colour"]) == COLOURS[status], key
    assert by_job[("orders", "orders_extract")]["stale"] == "true"
    assert rgb(by_job[("orders", "orders_extract")]["since"]) == STALE_BACKGROUND
    assert by_job[("wf1", "s_extract")]["stale"] == ""  # no stale_after_hours: never flagged
    assert by_job[("orders", "orders_extract")]["records"] == "1,500"
    # User data is shown as text, never run as markup.
    assert by_job[("nightly", "dump")]["message"] == XSS
    assert page.evaluate("window.__xss") is None
    assert page.locator("img").count() == 0
    assert XSS in page.locator('tr[data-job="orders_extract"] td.job').get_attribute("title")
    # Readable on a laptop: nothing runs off the side of a 1366 px screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
    assert page.locator('[data-count="failed"]').inner_text() == "1"

    png = page.screenshot()
    (tmp_path / "dashboard.png").write_bytes(png)
    distinct, inked, colours = pixel_stats(png)
    assert distinct > 50, f"only {distinct} colours: blank page? see {tmp_path / 'dashboard.png'}"
    assert inked > 0.05, f"only {inked:.1%} non-white pixels: see {tmp_path / 'dashboard.png'}"
    for status, colour in COLOURS.items():
        assert colour in colours, f"no {status} badge painted: see {tmp_path / 'dashboard.png'}"
    assert STALE_BACKGROUND in colours


def test_refreshes_in_place_and_survives_an_outage(service, page):
    post(service, "/load_cfg/wf1")
    post(service, "/open_batch/wf1")
    page.goto(service.url + "/?refresh=1")
    page.wait_for_selector('tr[data-job="s_extract"][data-status="open"]')
    page.evaluate("window.__same_document = true")

    post(service, "/close_batch/wf1")
    page.wait_for_selector('tr[data-job="s_extract"][data-status="success"]')
    assert page.evaluate("window.__same_document") is True  # updated in place, not reloaded
    assert page.locator("#refresh-status").inner_text() == "refreshes every 1 s"

    service.stop()
    page.wait_for_selector("#refresh-status.refresh-failed")
    assert "refresh failed" in page.locator("#refresh-status").inner_text()
    # The last data received stays on screen.
    assert page.locator('tr[data-job="s_extract"][data-status="success"]').count() == 1


def test_empty_state_in_browser(service, page):
    page.goto(service.url + "/dashboard?refresh=0")
    assert "No workflows yet" in page.locator("main").inner_text()
    assert page.locator("tr.job-row").count() == 0
    distinct, inked, _ = pixel_stats(page.screenshot())
    assert distinct > 10 and inked > 0.02


def test_the_filter_box_hides_what_does_not_match_and_survives_a_refresh(service, write_cfg, page):
    write_cfg("sales", "orders: {}\nrefunds: {}\n")
    write_cfg("stock", "levels: {}\n")
    for wf in ("sales", "stock"):
        post(service, f"/load_cfg/{wf}")
    page.goto(service.url + "/?refresh=1")
    page.fill("#filter", "refund")
    assert page.is_visible("tr[data-job=refunds]")
    assert page.is_hidden("tr[data-job=orders]") and page.is_hidden("tbody[data-workflow=stock]")
    post(service, "/open_batch/stock")  # the next refresh brings new data: the filter still applies
    page.wait_for_selector("tr[data-job=levels][data-status=open]", state="attached")
    assert page.is_hidden("tbody[data-workflow=stock]") and page.is_visible("tr[data-job=refunds]")
    page.fill("#filter", "")
    assert page.is_visible("tr[data-job=levels]")


def test_the_server_side_filter_and_the_pages_survive_refreshes(service, write_cfg, page):
    for i in range(60):
        write_cfg(f"w{i:02d}", "only: {}\n")
    post(service, "/load_cfg")

    def shown():
        return page.eval_on_selector_all("tbody.workflow", "bodies => bodies.map(b => b.dataset.workflow)")

    page.goto(service.url + "/?refresh=1")
    assert shown() == [f"w{i:02d}" for i in range(50)]
    page.click("#page-next")
    page.wait_for_selector("text=page 2 of 2")
    assert shown() == [f"w{i:02d}" for i in range(50, 60)] + ["wf1"]  # wf1: every test's cfg_dir has it

    page.fill("#filter", "W5")
    page.press("#filter", "Enter")  # the filter goes to the server: every page of the fleet
    page.wait_for_url("**q=W5**")
    assert shown() == [f"w{i:02d}" for i in range(50, 60)]
    assert "page=" not in page.url and "refresh=1" in page.url
    post(service, "/open_batch/w55")  # the next refresh brings new data, with the same filter
    page.wait_for_selector("tr[data-workflow=w55][data-status=open]")
    assert shown() == [f"w{i:02d}" for i in range(50, 60)]
    assert page.input_value("#filter") == "W5"

    page.select_option("#state", "open")
    page.wait_for_url("**state=open**")
    assert shown() == ["w55"]
    assert page.locator('[data-count="matching"]').inner_text() == "1"


# The coverage page's colours: covered, hole, a pending backfill chunk, and a range invalidated by late data.
TIMELINE = {"covered": (21, 128, 61), "hole": (220, 38, 38), "pending": (156, 163, 175), "dirty": (124, 58, 237)}


def test_the_coverage_page_draws_holes_backfills_and_a_legend(service, write_cfg, page, tmp_path):
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    write_cfg("daily", f"sales:\n  from_date: {start.isoformat()}\n  batch_size: day\n  max_window_hours: 25\n")
    post(service, "/load_cfg/daily")
    for day in (0, 3, 5):
        post(service, "/set_from_date/daily", {"from_date": (start + timedelta(days=day)).isoformat()})
        post(service, "/open_batch/daily")
        post(service, "/close_batch/daily")
    with urllib.request.urlopen(service.url + "/coverage/daily", timeout=10) as response:
        holes = json.loads(response.read())["sales"]["holes"]
    made = post(service, "/backfill/daily", {"from": holes[0][0], "to": holes[0][1]})

    page.goto(service.url + "/")
    page.click('a[href="coverage/daily/view"]')  # the dashboard's link opens the page, not JSON
    page.wait_for_selector("svg.timeline")
    page.click('a.zoom[data-zoom="month"]')
    page.wait_for_url("**zoom=month**")
    page.goto(page.url.split("&at=")[0] + "&at=2024-01-10")
    legend = page.eval_on_selector_all("#legend li", "items => items.map(i => [i.dataset.kind, "
                                       "getComputedStyle(i.querySelector('.swatch')).backgroundColor])")
    assert [kind for kind, _ in legend] == ["covered", "hole", "dirty", "quality", "success", "pending", "leased",
                                            "failed"]
    assert len({colour for _, colour in legend}) == 8  # eight distinct colours
    repair = page.locator("a.repair")
    assert repair.count() == 1 and repair.get_attribute("href") == f"../../backfill/daily/{made['backfill_id']}"
    hint = page.locator(".hint code").inner_text()
    assert hint == f"batchy backfill create daily --from {holes[1][0]} --to {holes[1][1]} --job sales"
    assert page.locator('rect.hole').count() == 2 and page.locator('rect.pending').count() >= 1
    assert page.locator("#previous").get_attribute("href").count("zoom=month") == 1
    assert page.locator("button, form").count() == 0
    page.click("#next")
    page.wait_for_selector("text=2024-02-01 00:00:00 +00:00 to 2024-03-01 00:00:00 +00:00")
    page.go_back()
    repair.click()  # the backfill it links to answers its chunks
    assert str(made["backfill_id"]) in page.locator("body").inner_text()

    # late data for day 1, 06:00-12:00: drawn in its own colour, listed as invalidated
    post(service, "/invalidate/daily", {"from": (start + timedelta(hours=6)).isoformat(),
                                        "to": (start + timedelta(hours=12)).isoformat()})
    page.goto(service.url + "/coverage/daily/view?zoom=month&at=2024-01-10")
    assert page.locator("rect.dirty").count() == 1
    assert "(invalidated)" in page.locator('li.hole-item[data-kind="dirty"]').inner_text()
    path = tmp_path / "coverage.png"
    path.write_bytes(page.screenshot(full_page=True))
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    _, inked, colours = pixel_stats(png)
    assert inked > 0.02, f"a blank page? see {path}"
    for kind, colour in TIMELINE.items():
        assert colour in colours, f"no {kind} painted: see {path}"
