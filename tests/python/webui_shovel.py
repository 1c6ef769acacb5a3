"""Shovels in the web UI (run by tests/it/shovel.rs through webui.py).

move:   on the page of queue $WEBUI_QUEUE ($WEBUI_DEPTH messages), "Move
        messages" to $WEBUI_DEST: the queue empties, the destination gets
        them, and the shovel deletes itself.
manage: on #/shovels, add shovel $WEBUI_SHOVEL from $WEBUI_QUEUE to
        $WEBUI_DEST, see it running, restart it, delete it.
"""

from urllib.parse import quote

from playwright.sync_api import expect


def queue_page(page, ui, name):
    page.goto(f"{ui.base}/#/queues/%2F/{quote(name, safe='')}")


def move(page, ui):
    import os

    queue, dest, depth = os.environ["WEBUI_QUEUE"], os.environ["WEBUI_DEST"], os.environ["WEBUI_DEPTH"]
    ui.log_in(page, "guest", "guest")
    expect(page.locator("#user")).to_have_text("guest")
    queue_page(page, ui, queue)
    expect(page.locator("#queue-ready")).to_have_text(depth)
    page.fill("#move-dest", dest)
    page.click("#move-form button[type=submit]")
    expect(page.locator("#move-result .ok")).to_contain_text(dest)
    ui.seen["moved"] = page.inner_text("#move-result")
    # The page refreshes on its interval: the queue empties.
    try:
        expect(page.locator("#queue-ready")).to_have_text("0")
    except AssertionError:
        import base64, urllib.request
        req = urllib.request.Request(ui.base + "/api/shovels", headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(req) as r:
            raise AssertionError("queue not emptied; shovels: " + r.read().decode())
    queue_page(page, ui, dest)
    expect(page.locator("#queue-ready")).to_have_text(depth)
    ui.seen["dest_ready"] = page.inner_text("#queue-ready")
    page.click("nav a[data-page=shovels]")
    expect(page.locator("#shovels-status")).to_contain_text("0 in all")


def manage(page, ui):
    import os

    name, queue, dest = os.environ["WEBUI_SHOVEL"], os.environ["WEBUI_QUEUE"], os.environ["WEBUI_DEST"]
    ui.log_in(page, "guest", "guest")
    expect(page.locator("#user")).to_have_text("guest")
    page.click("nav a[data-page=shovels]")
    page.fill("#shovel-name", name)
    page.fill("#shovel-src", queue)
    page.fill("#shovel-dest", dest)
    page.click("#shovel-form button[type=submit]")
    expect(page.locator("#shovels-result .ok")).to_contain_text(name)
    row = page.locator("#shovels tbody tr", has_text=name)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("running")
    expect(row).to_contain_text(f"{queue} (queue)")
    expect(row).to_contain_text(f"{dest} (queue)")
    ui.seen["row"] = row.inner_text()
    page.click(f"button[aria-label='Restart shovel {name}']")
    expect(page.locator("#shovels-result .ok")).to_contain_text("restarted")
    page.click(f"button[aria-label='Delete shovel {name}']")
    expect(page.locator("#shovels-result .ok")).to_contain_text("deleted")
    expect(row).to_have_count(0)
    ui.seen["confirmations"] = ui.dialogs[:]
