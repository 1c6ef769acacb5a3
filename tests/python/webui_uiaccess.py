"""Browser scenarios for the access-control and policy pages (issue 19):
a user's page, a vhost's page, policies and operator policies, a
channel's page. Run by tests/it/uiaccess.rs through webui.py as
"uiaccess.FUNCTION"; each FUNCTION(page, ui) records what it saw in
ui.seen, and the Rust test checks the broker through the API.
"""

import os
from urllib.parse import quote

from playwright.sync_api import expect


def _open(page, ui, route):
    ui.log_in(page, "guest", "guest")
    expect(page.locator("#user")).to_have_text("guest")
    page.goto(ui.base + "/#/" + route)


def user_page(page, ui):
    """Env: WEBUI_USER (no permissions yet), WEBUI_VHOST, WEBUI_DOOMED_USER."""
    user, vhost, doomed = (os.environ[k] for k in ("WEBUI_USER", "WEBUI_VHOST", "WEBUI_DOOMED_USER"))
    _open(page, ui, "users")
    page.fill("#users-filter", user)
    page.get_by_role("link", name=user, exact=True).click()
    expect(page.locator("#user-name")).to_have_text(user)
    expect(page.locator("#permissions")).to_have_text(
        "This user does not have permission to access any virtual hosts.")

    # An invalid regex: the API's refusal shows under the form.
    page.select_option("#permission-vhost", vhost)
    page.fill("#permission-configure", "(")
    page.click("#permission-form button[type=submit]")
    error = page.locator("#permission-form .error")
    expect(error).to_contain_text("(")
    ui.seen["regex_error"] = error.inner_text()

    page.fill("#permission-configure", "^cfg")
    page.fill("#permission-read", "^r")
    page.click("#permission-form button[type=submit]")
    expect(page.locator("#permissions-result")).to_have_text("Permission set.")
    row = page.locator("#permissions tbody tr")
    expect(row).to_have_count(1)
    ui.seen["permission_row"] = [row.locator("td").nth(i).inner_text() for i in range(4)]

    # A topic permission on amq.topic of the vhost, set and cleared.
    page.select_option("#topic-permission-vhost", vhost)
    expect(page.locator("#topic-permission-exchange option[value='amq.topic']")).to_have_count(1)
    page.select_option("#topic-permission-exchange", "amq.topic")
    page.fill("#topic-permission-write", "^w")
    page.click("#topic-permission-form button[type=submit]")
    topic = page.locator("#topic-permissions tbody tr")
    expect(topic).to_have_count(1)
    ui.seen["topic_row"] = [topic.locator("td").nth(i).inner_text() for i in range(4)]
    page.get_by_role("button", name=f"Clear topic permissions of {user} in {vhost} on amq.topic").click()
    expect(page.locator("#topic-permissions")).to_have_text("… no topic permissions …")

    # Limits: a value that is no number is refused in place; Enter submits.
    page.select_option("#limit-name", "max-channels")
    page.fill("#limit-value", "many")
    page.press("#limit-value", "Enter")
    expect(page.locator("#limit-form .error")).to_be_visible()
    ui.seen["limit_error"] = page.inner_text("#limit-form .error")
    page.fill("#limit-value", "5")
    page.press("#limit-value", "Enter")
    expect(page.locator("#limits tbody tr")).to_have_count(1)
    page.select_option("#limit-name", "max-connections")
    page.fill("#limit-value", "3")
    page.click("#limit-form button[type=submit]")
    expect(page.locator("#limits tbody tr")).to_have_count(2)
    page.get_by_role("button", name="Clear limit max-channels").click()
    expect(page.locator("#limits tbody tr")).to_have_count(1)
    ui.seen["limits"] = page.locator("#limits tbody tr td").all_inner_texts()[:2]

    # Update: passwords must match; then the new tags show.
    page.fill("#user-tags", "monitoring")
    page.fill("#user-password", "new-secret")
    page.fill("#user-password-confirm", "other")
    page.click("#user-update button[type=submit]")
    expect(page.locator("#user-update .error")).to_have_text("Passwords do not match.")
    page.fill("#user-password-confirm", "new-secret")
    page.click("#user-update button[type=submit]")
    expect(page.locator("#user-update-result")).to_have_text("User updated.")
    expect(page.locator("#user-tags-now")).to_have_text("monitoring")

    # On a phone the page fits its width (tables scroll inside their box).
    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_timeout(300)
    ui.seen["phone_overflow"] = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    page.set_viewport_size({"width": 1200, "height": 900})

    # Delete another user from its page: back to the list.
    page.goto(ui.base + "/#/users/" + quote(doomed, safe=""))
    expect(page.locator("#user-name")).to_have_text(doomed)
    page.click("#user-delete button[type=submit]")
    expect(page).to_have_url(ui.base + "/#/users")
    ui.seen["dialogs"] = list(ui.dialogs)


def vhost_page(page, ui):
    """Env: WEBUI_VHOST, WEBUI_USER (no permissions there), WEBUI_DOOMED_VHOST."""
    vhost, user, doomed = (os.environ[k] for k in ("WEBUI_VHOST", "WEBUI_USER", "WEBUI_DOOMED_VHOST"))
    _open(page, ui, "vhosts")
    page.fill("#vhosts-filter", vhost)
    page.get_by_role("link", name=vhost, exact=True).click()
    expect(page.locator("#vhost-name")).to_have_text(vhost)
    expect(page.locator("#permissions")).to_have_text("No users have permission to access this virtual host.")

    page.select_option("#permission-user", user)
    page.fill("#permission-write", "^only-this")
    page.click("#permission-form button[type=submit]")
    row = page.locator("#permissions tbody tr")
    expect(row).to_have_count(1)
    expect(row.get_by_role("link", name=user, exact=True)).to_have_count(1)

    page.select_option("#limit-name", "max-queues")
    page.fill("#limit-value", "2")
    page.click("#limit-form button[type=submit]")
    page.select_option("#limit-name", "max-connections")
    page.fill("#limit-value", "10")
    page.click("#limit-form button[type=submit]")
    expect(page.locator("#limits tbody tr")).to_have_count(2)
    page.get_by_role("button", name="Clear limit max-connections").click()
    expect(page.locator("#limits tbody tr")).to_have_count(1)
    ui.seen["limits"] = page.locator("#limits tbody tr td").all_inner_texts()[:2]

    page.goto(ui.base + "/#/vhosts/" + quote(doomed, safe=""))
    expect(page.locator("#vhost-name")).to_have_text(doomed)
    page.click("#vhost-delete button[type=submit]")
    expect(page).to_have_url(ui.base + "/#/vhosts")
    ui.seen["dialogs"] = list(ui.dialogs)


def _definition_row(page, form, n):
    rows = page.locator(f"#{form} .kv")
    return rows.nth(n).locator(".kv-key"), rows.nth(n).locator(".kv-value"), rows.nth(n).locator(".kv-type")


def policy_add(page, ui):
    """Env: WEBUI_QUEUE (in "/"). Adds policy "ui-policy" (max-length 2)."""
    queue = os.environ["WEBUI_QUEUE"]
    ui.log_in(page, "guest", "guest")
    page.click("nav a[data-page=policies]")
    expect(page.locator("#policies")).to_have_text("… no policies …")
    page.select_option("#policy-vhost", "/")
    page.fill("#policy-name", "ui-policy")
    page.fill("#policy-pattern", "(")
    page.select_option("#policy-apply-to", "queues")
    # A known key from the hints comes typed as a number.
    page.locator("#policy-form").get_by_role("button", name="Max length", exact=True).click()
    key, value, kind = _definition_row(page, "policy-form", 0)
    expect(key).to_have_value("max-length")
    expect(kind).to_have_value("number")
    expect(value).to_be_focused()
    value.fill("two")
    page.click("#policy-form button[type=submit]")
    expect(page.locator("#policy-form .error")).to_have_text("max-length must be a number; got two")
    value.fill("2")
    # A key typed in by hand, in the empty row kept at the end.
    key2, value2, kind2 = _definition_row(page, "policy-form", 1)
    key2.fill("dead-letter-exchange")
    value2.fill("ui-dlx")
    expect(page.locator("#policy-form .kv")).to_have_count(3)
    page.click("#policy-form button[type=submit]")
    error = page.locator("#policy-form .error")
    expect(error).to_contain_text("pattern should be regular expression but is invalid")
    ui.seen["pattern_error"] = error.inner_text()
    page.fill("#policy-pattern", "^" + queue + "$")
    page.click("#policy-form button[type=submit]")
    expect(page.locator("#policy-result")).to_have_text("Policy ui-policy saved.")
    row = page.locator("#policies tbody tr")
    expect(row).to_have_count(1)
    ui.seen["policy_row"] = row.locator("td").all_inner_texts()[:6]


def policy_edit(page, ui):
    """Env: WEBUI_QUEUE. ui-policy's max-length to 3 (priority 5); an
    operator policy "ui-op" with max-length 1."""
    queue = os.environ["WEBUI_QUEUE"]
    _open(page, ui, "policies")
    page.get_by_role("button", name="Edit policy ui-policy").click()
    expect(page.locator("#policy-name")).to_be_focused()
    expect(page.locator("#policy-pattern")).to_have_value("^" + queue + "$")
    key, value, kind = _definition_row(page, "policy-form", 0)
    expect(key).to_have_value("dead-letter-exchange")
    key, value, kind = _definition_row(page, "policy-form", 1)
    expect(key).to_have_value("max-length")
    expect(kind).to_have_value("number")
    value.fill("3")
    page.fill("#policy-priority", "5")
    page.click("#policy-form button[type=submit]")
    expect(page.locator("#policies tbody tr td").nth(4)).to_contain_text("max-length: 3")

    page.select_option("#operator-policy-vhost", "/")
    page.fill("#operator-policy-name", "ui-op")
    page.fill("#operator-policy-pattern", "^" + queue + "$")
    page.locator("#operator-policy-form").get_by_role("button", name="Max length", exact=True).click()
    _, value, _ = _definition_row(page, "operator-policy-form", 0)
    value.fill("1")
    page.click("#operator-policy-form button[type=submit]")
    expect(page.locator("#operator-policy-result")).to_have_text("Operator policy ui-op saved.")
    expect(page.locator("#operator-policies tbody tr")).to_have_count(1)


def policy_delete(page, ui):
    """Deletes ui-policy and ui-op; the vhost filter narrows both lists."""
    _open(page, ui, "policies")
    page.select_option("#vhost", "/")
    expect(page.locator("h1")).to_have_text("Policies in /")
    page.get_by_role("button", name="Delete policy ui-policy").click()
    expect(page.locator("#policies")).to_have_text("… no policies …")
    page.get_by_role("button", name="Delete operator policy ui-op").click()
    expect(page.locator("#operator-policies")).to_have_text("… no policies …")
    ui.seen["dialogs"] = list(ui.dialogs)


def policy_non_admin(page, ui):
    """A policymaker (WEBUI_MAKER, password "secret") may change policies
    and sees operator policies, but cannot change them."""
    ui.log_in(page, os.environ["WEBUI_MAKER"], "secret")
    page.click("nav a[data-page=policies]")
    expect(page.locator("#policy-form")).to_have_count(1)
    expect(page.get_by_role("button", name="Edit policy ui-policy")).to_have_count(1)
    expect(page.locator("#operator-policies tbody tr")).to_have_count(1)
    ui.seen["operator_form"] = page.locator("#operator-policy-form").count()
    ui.seen["operator_buttons"] = page.locator("#operator-policies button").count()


def channel_page(page, ui):
    """Env: WEBUI_CHANNEL (its name), WEBUI_TAG (its consumer's tag)."""
    channel, tag = os.environ["WEBUI_CHANNEL"], os.environ["WEBUI_TAG"]
    _open(page, ui, "channels")
    page.get_by_role("link", name=channel, exact=True).click()
    expect(page.locator("#channel-name")).to_have_text(channel)
    ui.seen["prefetch"] = page.locator("#channel-prefetch").inner_text()
    ui.seen["mode"] = page.inner_text("#channel-mode")
    consumer = page.locator("#channel-consumers tbody tr")
    expect(consumer).to_have_count(1)
    ui.seen["consumer"] = consumer.locator("td").all_inner_texts()[:5]
    publish = page.locator("#channel-rates tbody tr").first
    expect(publish.locator("td").first).to_have_text("Publish")
    # Rates are sampled: wait for the publisher's to show.
    expect(publish.locator("td").nth(1)).not_to_have_text("0.00/s", timeout=20000)
    ui.seen["publish_rate"] = publish.locator("td").nth(1).inner_text()
    # Its connection's page links back to it.
    page.locator("#channel-live").get_by_role("link").first.click()
    expect(page.locator("#connection-name")).to_be_visible()
    page.get_by_role("link", name=channel, exact=True).click()
    expect(page.locator("#channel-name")).to_have_text(channel)
