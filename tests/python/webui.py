"""Drives Leveret's web management UI in headless Chromium (Playwright).

Usage: webui.py BASE_URL SCENARIO [SCREENSHOT_DIR]
  BASE_URL        the management listener, e.g. http://127.0.0.1:15672
  SCENARIO        "main": log in as guest, see the queue named by $WEBUI_QUEUE
                  with its depth ($WEBUI_DEPTH), publish a message from its
                  page and one from the page of exchange $WEBUI_EXCHANGE
                  (bound to it with key "k"), get them back, purge and
                  delete it; close the connection whose client name is
                  $WEBUI_CONNECTION; create and delete user
                  $WEBUI_NEW_USER; add and delete a vhost; export
                  definitions and import a file
                  with a queue; a user without a management tag
                  ($WEBUI_PLAIN_USER, password "secret") refused;
                  "alarm": log in, see the memory alarm banner;
                  "MODULE.FUNCTION": FUNCTION(page, ui) of
                  tests/python/webui_MODULE.py, where `ui` is this module
                  (ui.base, ui.seen, ui.log_in, ui.dialogs).
  SCREENSHOT_DIR  where to save overview.png, queues.png, queue.png
The browser is Debian's chromium ($LEVERET_CHROMIUM, default
/usr/bin/chromium), so Playwright downloads nothing. Prints one JSON line
with what it saw; exits non-zero on the first failed expectation.
"""

import importlib
import json
import os
import sys
from urllib.parse import quote

from playwright.sync_api import expect, sync_playwright

base, scenario = sys.argv[1], sys.argv[2]
shots = sys.argv[3] if len(sys.argv) > 3 else None
chromium = os.environ.get("LEVERET_CHROMIUM", "/usr/bin/chromium")
seen = {}
dialogs = []


def log_in(page, user, password):
    page.goto(base + "/")
    page.fill("#login-user", user)
    page.fill("#login-password", password)
    page.click("form.login button[type=submit]")


def main_scenario(page):
    queue = os.environ["WEBUI_QUEUE"]
    depth = os.environ["WEBUI_DEPTH"]

    log_in(page, "guest", "guest")
    expect(page.locator("#user")).to_have_text("guest")
    expect(page.locator("#total-messages")).to_have_text(depth)
    seen["overview_total"] = page.inner_text("#total-messages")

    page.click("nav a[data-page=queues]")
    page.fill("#queues-filter", queue)
    row = page.locator("#queues tbody tr", has=page.get_by_role("link", name=queue, exact=True))
    expect(row).to_have_count(1)
    cells = row.locator("td")
    # All vhosts: vhost, name, type, features, state, ready, unacked, total.
    expect(cells.nth(7)).to_have_text(depth)
    seen["list_depth"] = cells.nth(7).inner_text()
    # The hostile name is text, not markup: no element was made from it.
    expect(page.locator("#queues img")).to_have_count(0)
    if shots:
        page.fill("#queues-filter", "")
        page.wait_for_timeout(600)
        page.screenshot(path=f"{shots}/queues.png", full_page=True)
        page.fill("#queues-filter", queue)
        expect(row).to_have_count(1)

    # An API error is shown in place, with the API's reason.
    page.check("#queues-regex")
    page.fill("#queues-filter", "(")
    expect(page.locator("main .error")).to_contain_text("regex")
    seen["regex_error"] = page.inner_text("main .error")
    page.uncheck("#queues-regex")
    page.fill("#queues-filter", queue)
    expect(page.locator("main .error")).to_have_count(0)

    # The skip link focuses the page, and does not change the route.
    page.focus("a.skip")
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    expect(page).to_have_url(f"{base}/#/queues")

    # Sorting from the keyboard: the column headers are buttons.
    page.focus("button[data-sort=messages]")
    page.keyboard.press("Enter")
    expect(page.locator("th:has(button[data-sort=messages])")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("button[data-sort=messages]")).to_be_focused()

    # The vhost filter: the list is of that vhost, without its column.
    page.select_option("#vhost", "/")
    expect(page.locator("main h1")).to_have_text("Queues in /")
    expect(row.locator("td").nth(6)).to_have_text(depth)
    page.select_option("#vhost", "")
    expect(page.locator("main h1")).to_have_text("Queues")

    # Into the queue's page from the keyboard.
    row.get_by_role("link", name=queue, exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#queue-name")).to_have_text(queue)
    expect(page.locator("#queue-messages")).to_have_text(depth)

    page.fill("#publish-payload", "hello from the browser")
    page.click("#publish-form button[type=submit]")
    expect(page.locator("#publish-result")).to_have_text("Message published.")
    after = str(int(depth) + 1)
    page.select_option("#refresh", "5")
    expect(page.locator("#queue-messages")).to_have_text(after)
    seen["after_publish"] = after

    # From the exchange's page (reached from the queue's bindings): one
    # routed to the queue, one routed nowhere.
    exchange = os.environ["WEBUI_EXCHANGE"]
    page.get_by_role("link", name=exchange, exact=True).click()
    expect(page.locator("#exchange-name")).to_have_text(exchange)
    expect(page.locator("#exchange-live")).to_contain_text("direct")
    page.fill("#publish-key", "nowhere")
    page.fill("#publish-payload", "lost")
    page.click("#publish-form button[type=submit]")
    expect(page.locator("#publish-result")).to_have_text("Message published, but not routed.")
    page.fill("#publish-key", "k")
    page.fill("#publish-payload", "through the exchange")
    page.click("#publish-form button[type=submit]")
    expect(page.locator("#publish-result")).to_have_text("Message published.")
    if shots:
        page.screenshot(path=f"{shots}/exchange.png", full_page=True)
    page.get_by_role("link", name=queue, exact=True).click()
    after = str(int(depth) + 2)
    expect(page.locator("#queue-messages")).to_have_text(after)

    # Get every message, requeued: the two published here come last.
    page.fill("#get-count", after)
    page.click("#get-form button[type=submit]")
    payloads = page.locator("#get-result pre.payload")
    expect(payloads).to_have_count(int(after))
    expect(payloads.nth(int(after) - 2)).to_have_text("hello from the browser")
    expect(payloads.last).to_have_text("through the exchange")
    seen["got"] = [payloads.nth(int(after) - 2).inner_text(), payloads.last.inner_text()]
    if shots:
        page.fill("#get-count", "1")
        page.click("#get-form button[type=submit]")
        expect(payloads).to_have_count(1)
        page.screenshot(path=f"{shots}/queue.png", full_page=True)
        # The same page on a phone.
        # The overview once the charts have a few samples (one each 5 s).
        page.click("nav a[data-page=overview]")
        page.wait_for_timeout(12000)
        page.reload()
        expect(page.locator("#overview svg")).to_have_count(2)
        page.screenshot(path=f"{shots}/overview.png", full_page=True)
        # The queue list on a phone.
        page.set_viewport_size({"width": 390, "height": 844})
        page.click("nav a[data-page=queues]")
        expect(row).to_have_count(1)
        page.screenshot(path=f"{shots}/queues-phone.png")
        page.set_viewport_size({"width": 1200, "height": 900})

    # Purge, then delete, each after a confirmation.
    page.goto(f"{base}/#/queues/%2F/{quote(queue, safe='')}")
    expect(page.locator("#queue-messages")).to_have_text(after)
    page.get_by_role("button", name="Purge Messages").click()
    expect(page.locator("#danger-result")).to_have_text("Queue purged.")
    expect(page.locator("#queue-messages")).to_have_text("0")
    page.get_by_role("button", name="Delete Queue").click()
    expect(page).to_have_url(f"{base}/#/queues")
    expect(page.locator("#queues-status")).to_contain_text("0 matching")

    # A client's connection, found by its name, closed with a reason.
    client = os.environ["WEBUI_CONNECTION"]
    page.click("nav a[data-page=connections]")
    row = page.locator("#connections tbody tr", has_text=client)
    expect(row).to_have_count(1)
    connection = row.get_by_role("link").inner_text()
    # Its channel is listed, and leads back to it.
    page.click("nav a[data-page=channels]")
    channel = page.locator("#channels tbody tr", has=page.get_by_role("link", name=connection, exact=True))
    expect(channel).to_have_count(1)
    expect(channel.locator("td").nth(1)).to_have_text(f"{connection} (1)")
    channel.get_by_role("link", name=connection, exact=True).click()
    expect(page.locator("#connection-live")).to_contain_text(client)
    expect(page.locator("#connection-channels tbody tr")).to_have_count(1)
    if shots:
        page.screenshot(path=f"{shots}/connection.png", full_page=True)
    page.fill("#close-reason", "closed from the browser")
    page.get_by_role("button", name="Force Close").click()
    expect(page.locator("#close-result")).to_have_text("Connection closed.")

    # Create a user, see it listed, delete it.
    made = os.environ["WEBUI_NEW_USER"]
    page.click("nav a[data-page=users]")
    page.fill("#user-name", made)
    page.fill("#user-password", "pw")
    page.fill("#user-tags", "management, monitoring")
    page.click("#user-form button[type=submit]")
    expect(page.locator("#users-result")).to_have_text(f"User {made} saved.")
    page.fill("#users-filter", made)
    user_row = page.locator("#users tbody tr", has_text=made)
    expect(user_row).to_have_count(1)
    expect(user_row.locator("td").nth(1)).to_have_text("management, monitoring")
    seen["user_made"] = user_row.locator("td").nth(0).inner_text()
    user_row.get_by_role("button", name=f"Delete user {made}").click()
    expect(page.locator("#users-result")).to_have_text(f"User {made} deleted.")
    expect(user_row).to_have_count(0)

    # Add a vhost (it appears in the header's filter too), delete it.
    page.click("nav a[data-page=vhosts]")
    page.fill("#vhost-name", "made-vhost")
    page.click("#vhost-form button[type=submit]")
    expect(page.locator("#vhosts-result")).to_have_text("Virtual host made-vhost added.")
    expect(page.locator("#vhosts tbody tr", has_text="made-vhost")).to_have_count(1)
    page.get_by_role("button", name="Delete virtual host made-vhost").click()
    expect(page.locator("#vhosts-result")).to_have_text("Virtual host made-vhost deleted.")
    expect(page.locator("#vhosts tbody tr", has_text="made-vhost")).to_have_count(0)

    # Definitions: export downloads the broker's JSON, import creates what
    # the uploaded file holds.
    page.click("nav a[data-page=definitions]")
    with page.expect_download() as download:
        page.click("#definitions-export")
    exported = json.loads(open(download.value.path()).read())
    seen["exported_users"] = sorted(u["name"] for u in exported["users"])
    imported = {"queues": [{"name": "imported-in-the-browser", "vhost": "/", "durable": True,
                            "auto_delete": False, "arguments": {}}]}
    page.set_input_files("#definitions-file", files=[{
        "name": "defs.json", "mimeType": "application/json",
        "buffer": json.dumps(imported).encode()}])
    page.click("#definitions-import button[type=submit]")
    expect(page.locator("#definitions-result")).to_have_text(
        "Your definition file was imported successfully.")

    seen["confirmations"] = dialogs[:]
    page.click("#logout")
    expect(page.locator("#login-user")).to_be_visible()

    log_in(page, os.environ["WEBUI_PLAIN_USER"], "secret")
    expect(page.locator("#login-status")).to_contain_text("Login failed")
    expect(page.locator("#login-reason")).to_have_text("Not management user")
    expect(page.locator("#nav")).to_be_hidden()
    seen["refused"] = page.inner_text("#login-reason")

    log_in(page, "guest", "wrong")
    expect(page.locator("#login-status")).to_have_text("Login failed")


def alarm_scenario(page):
    log_in(page, "guest", "guest")
    banner = page.locator("#alarms .alarm")
    expect(banner).to_contain_text("Memory alarm")
    seen["banner"] = banner.first.inner_text()


# Generous waits: the whole test suite runs beside this on a few cores.
expect.set_options(timeout=30000)

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(30000)
    problems = []
    # Any script error or CSP violation fails the run.
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    try:
        scenarios = {"main": main_scenario, "alarm": alarm_scenario}
        if scenario in scenarios:
            scenarios[scenario](page)
        else:
            module, function = scenario.split(".")
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            getattr(importlib.import_module(f"webui_{module}"), function)(page, sys.modules[__name__])
    finally:
        browser.close()
    # Chromium logs each API refusal the test provokes (401, 400) as a
    # failed resource; anything else (a script error, a CSP violation) fails.
    problems = [m for m in problems if "Failed to load resource" not in m]
    if problems:
        raise SystemExit("\n".join(problems))
print(json.dumps(seen))
