"""Browser scenarios for the UI's queues, exchanges, bindings, streams and
overview (driven by tests/it/uiobjects.rs through webui.py)."""

from playwright.sync_api import expect


def objects(page, ui):
    """Add a queue with arguments and an exchange from their forms; a
    redeclare with other arguments is refused in place; bind the exchange
    to the queue from each page and unbind it there."""
    ui.log_in(page, "guest", "guest")
    expect(page.locator("#user")).to_have_text("guest")
    page.click("nav a[data-page=queues]")
    form = page.locator("#new-queue")
    expect(form.locator("#new-queue-vhost option[value='/']")).to_have_count(1)
    page.fill("#new-queue-name", "made-in-the-form")
    # A hint fills in the key and its type; the value is the user's.
    form.locator("button.hint[data-arg=x-max-length]").click()
    expect(page.locator("#new-queue-arg-key-0")).to_have_value("x-max-length")
    expect(page.locator("#new-queue-arg-type-0")).to_have_value("number")
    page.fill("#new-queue-arg-value-0", "10")
    # Typed by hand: key, value and type.
    page.fill("#new-queue-arg-key-1", "x-dead-letter-exchange")
    page.fill("#new-queue-arg-value-1", "dlx")
    form.locator("button.hint[data-arg=x-single-active-consumer]").click()
    # Stream-only hints are hidden for a classic queue.
    expect(form.locator("button.hint[data-arg=x-max-age]")).to_be_hidden()
    form.locator("button[type=submit]").click()
    expect(page.locator("#new-queue-result")).to_contain_text("declared")
    page.fill("#queues-filter", "made-in-the-form")
    expect(page.locator("#queues tbody tr", has=page.get_by_role("link", name="made-in-the-form", exact=True))).to_have_count(1)

    # Again with another max length: RabbitMQ's refusal, in place.
    page.fill("#new-queue-arg-value-0", "20")
    form.locator("button[type=submit]").click()
    error = page.locator("#new-queue-result .error")
    expect(error).to_contain_text("inequivalent arg 'x-max-length'")
    ui.seen["conflict"] = error.inner_text()

    # A bad number never reaches the API.
    page.fill("#new-queue-arg-value-0", "ten")
    form.locator("button[type=submit]").click()
    expect(error).to_have_text('Argument x-max-length: "ten" is not a number')

    page.click("nav a[data-page=exchanges]")
    xform = page.locator("#new-exchange")
    expect(xform.locator("#new-exchange-type option[value=topic]")).to_have_count(1)
    page.fill("#new-exchange-name", "made-exchange")
    page.select_option("#new-exchange-type", "topic")
    xform.locator("button.hint[data-arg=alternate-exchange]").click()
    page.fill("#new-exchange-arg-value-0", "alt")
    xform.locator("button[type=submit]").click()
    expect(page.locator("#new-exchange-result")).to_contain_text("declared")

    # The exchange's page: bind it to the queue, see it, unbind it.
    page.locator("#new-exchange-result a").click()
    expect(page.locator("#exchange-name")).to_have_text("made-exchange")
    expect(page.locator("#exchange-live")).to_contain_text("topic")
    page.select_option("#bind-kind", "q")
    page.fill("#bind-destination", "made-in-the-form")
    # A key with what URLs quote: unbinding uses its properties_key.
    page.fill("#bind-key", "from/exchange %page~")
    page.click("#bind-form button[type=submit]")
    expect(page.locator("#bind-result")).to_have_text("Binding added.")
    row = page.locator("#exchange-live tr", has_text="from/exchange %page~")
    expect(row).to_have_count(1)
    ui.seen["bound_from_exchange"] = row.locator("td").nth(1).inner_text()
    row.locator("button.unbind").click()
    expect(row).to_have_count(0)

    # The queue's page: bind from the exchange, see it, unbind it.
    page.goto(ui.base + "/#/queues/%2F/made-in-the-form")
    expect(page.locator("#queue-name")).to_have_text("made-in-the-form")
    page.fill("#bind-source", "made-exchange")
    page.fill("#bind-key", "from-queue-page")
    page.click("#bind-form button[type=submit]")
    expect(page.locator("#bind-result")).to_have_text("Binding added.")
    row = page.locator("#queue-live tr", has_text="from-queue-page")
    expect(row).to_have_count(1)
    ui.seen["bound_from_queue"] = row.locator("td").nth(1).inner_text()
    # The default exchange's binding has no Unbind: it cannot be removed.
    default = page.locator("#queue-live tr", has_text="(AMQP default)")
    expect(default.locator("button.unbind")).to_have_count(0)
    row.locator("button.unbind").click()
    expect(row).to_have_count(0)

    # A binding from an exchange that does not exist: RabbitMQ's 404, in place.
    page.fill("#bind-source", "no-such-exchange")
    page.click("#bind-form button[type=submit]")
    expect(page.locator("#bind-result .error")).to_be_visible()


def streams(page, ui):
    """The streams list has the stream queue (not the classic one); its
    page shows the reader with its offset and lag."""
    ui.log_in(page, "guest", "guest")
    page.click("nav a[data-page=streams]")
    expect(page.locator("main h1")).to_have_text("Streams")
    rows = page.locator("#streams tbody tr")
    expect(rows.get_by_role("link", name="a-stream", exact=True)).to_have_count(1)
    expect(rows).to_have_count(1)
    ui.seen["streams"] = [rows.locator("td").nth(1).inner_text()]
    # All vhosts: vhost, name, messages.
    expect(rows.locator("td").nth(2)).to_have_text("8")
    ui.seen["messages"] = rows.locator("td").nth(2).inner_text()

    # The stream protocol client's connection, and its page.
    client = page.locator("#stream-connections tbody tr", has_text="ui-stream-client")
    expect(client).to_have_count(1)
    client.locator("a").first.click()
    expect(page.locator("main h1")).to_contain_text("Stream connection")
    publisher = page.locator("#stream-publishers tbody tr")
    expect(publisher).to_have_count(1)
    ui.seen["publisher"] = publisher.locator("td").nth(2).inner_text()
    expect(publisher.locator("td").nth(4)).to_have_text("3")
    ui.seen["publisher_confirmed"] = publisher.locator("td").nth(4).inner_text()
    consumer = page.locator("#stream-consumers tbody tr")
    expect(consumer).to_have_count(1)
    ui.seen["consumer_stream"] = consumer.locator("td").nth(0).inner_text()

    # The stream's page: its readers with offset and lag.
    consumer.get_by_role("link", name="a-stream", exact=True).click()
    expect(page.locator("#queue-name")).to_have_text("a-stream")
    reader = page.locator("#stream-readers tbody tr", has_text="reader-1")
    expect(reader).to_have_count(1)
    ui.seen["reader"] = reader.locator("td").nth(0).inner_text()


def overview(page, ui):
    """The node's data directory and a publisher confirm rate."""
    import os

    ui.log_in(page, "guest", "guest")
    expect(page.locator("#node-db-dir")).to_have_text(os.environ["WEBUI_DB_DIR"])
    ui.seen["db_dir"] = page.inner_text("#node-db-dir")
    rate = page.locator("#rate-confirm")
    page.select_option("#refresh", "5")
    expect(rate).not_to_have_text("0.00/s", timeout=30000)
    expect(rate).not_to_have_text("—")
    ui.seen["confirm_rate"] = rate.inner_text()


def many_queues(page, ui):
    """The queue list with $WEBUI_QUEUES queues: it loads, filters and
    sorts; the longest the page stopped responding (the biggest gap
    between the ticks of a 10 ms timer, less the 10 ms) and how long each
    step waited are reported."""
    import os
    import time

    total = int(os.environ["WEBUI_QUEUES"])
    page.add_init_script("""
        window.longest = 0;
        let last = performance.now();
        setInterval(() => {
          const now = performance.now();
          window.longest = Math.max(window.longest, now - last - 10);
          last = now;
        }, 10);
    """)
    ui.log_in(page, "guest", "guest")
    expect(page.locator("#user")).to_have_text("guest")
    page.select_option("#refresh", "0")
    start = time.monotonic()
    page.click("nav a[data-page=queues]")
    expect(page.locator("#queues-status")).to_contain_text(f"{total:,} in all", timeout=60000)
    ui.seen["load_s"] = round(time.monotonic() - start, 2)
    start = time.monotonic()
    page.fill("#queues-filter", "many-0999")
    expect(page.locator("#queues-status")).to_contain_text("10 matching", timeout=60000)
    ui.seen["filter_s"] = round(time.monotonic() - start, 2)
    start = time.monotonic()
    page.click("button[data-sort=messages]")
    expect(page.locator("th:has(button[data-sort=messages])")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#queues-status")).to_contain_text("10 matching", timeout=60000)
    ui.seen["sort_s"] = round(time.monotonic() - start, 2)
    ui.seen["rows"] = page.locator("#queues tbody tr").count()
    ui.seen["longest_task_ms"] = page.evaluate("window.longest")
    # The timer sees a freeze at all: a 120 ms one of our own.
    page.evaluate("() => setTimeout(() => { const t = performance.now(); while (performance.now() - t < 120) {} }, 0)")
    page.wait_for_timeout(300)
    ui.seen["observer_saw_ms"] = page.evaluate("window.longest")


def vhost_list(page, ui):
    """The header's vhost filter follows vhosts added and deleted through
    the API, without logging in again; a chosen vhost that goes away
    leaves the filter at All."""
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
            "Content-Type": "application/json"}
    ui.log_in(page, "guest", "guest")
    expect(page.locator("#user")).to_have_text("guest")
    page.select_option("#refresh", "5")
    option = page.locator("#vhost option[value='appears-later']")
    expect(option).to_have_count(0)
    assert page.request.put(ui.base + "/api/vhosts/appears-later", headers=auth, data="{}").status == 201
    expect(option).to_have_count(1)
    ui.seen["added"] = True
    page.click("nav a[data-page=queues]")
    page.select_option("#vhost", "appears-later")
    expect(page.locator("main h1")).to_have_text("Queues in appears-later")
    assert page.request.delete(ui.base + "/api/vhosts/appears-later", headers=auth).status == 204
    expect(option).to_have_count(0)
    expect(page.locator("#vhost")).to_have_value("")
    expect(page.locator("main h1")).to_have_text("Queues")
    ui.seen["removed"] = True
