"""The provider's review page in a real browser: headless Debian Chromium
driven by Selenium through chromedriver (both from apt). Run by
gateway/tests/api/airlock.rs::a_reviewer_releases_and_rejects_in_a_real_browser.

usage: review.py BASE RELEASE_ID REJECT_ID SCREENSHOTS_DIR

BASE serves the review page to this (loopback) browser; both executions are
held for review by `ann`. The script opens the list, reads RELEASE_ID's
report and text result, releases it with a reason, then rejects REJECT_ID;
it waits until the page shows each decision applied. Exits non-zero with
the reason when anything is missing; saves review.png and decided.png.
"""

import pathlib
import sys
import time

from chromium import checker, start
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

base, release_id, reject_id, shots = sys.argv[1:5]
shots = pathlib.Path(shots)
shots.mkdir(parents=True, exist_ok=True)

driver, wait = start()
check = checker("review page")


def decide(execution, decision, reason):
    driver.get(f"{base}/review?execution={execution}")
    wait.until(lambda d: d.find_elements(By.ID, "decide"))
    driver.find_element(By.NAME, "reason").send_keys(reason)
    driver.find_element(By.CSS_SELECTOR, f'button[value="{decision}"]').click()
    # The form posts, the server redirects back; the decision is applied
    # within a second: reload until the status says so.
    want = "succeeded" if decision == "release" else "failed"
    status = ""
    for _ in range(60):
        try:
            status = driver.find_element(By.ID, "status").text
        except (StaleElementReferenceException, NoSuchElementException):
            # Read while the post's redirect replaced the page (the old one
            # gone, the new one not yet parsed): read again, without a reload
            # that could cancel the post.
            time.sleep(0.25)
            continue
        if want in status:
            return status
        time.sleep(0.25)
        driver.get(f"{base}/review?execution={execution}")
    raise SystemExit(f"review page: {execution} never became {want}: {status!r}")


try:
    # From the dashboard's link to the review page.
    driver.get(base + "/")
    link = wait.until(lambda d: d.find_element(By.ID, "review"))
    check("held for review: 2" in link.text, f"the dashboard's link says {link.text!r}")
    link.click()
    for execution in (release_id, reject_id):
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{execution}"]'))
    driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{release_id}"] a').click()
    wait.until(lambda d: d.find_elements(By.ID, "report"))
    check("held" in driver.find_element(By.ID, "status").text, "the status is not held")
    report = driver.find_element(By.ID, "report").text
    check("no finding" in report, f"the report says {report!r}")
    outputs = driver.find_element(By.ID, "outputs").text
    check("counts.json" in outputs and '"words"' in outputs, f"the results shown: {outputs!r}")
    check("stdout.log" in driver.find_element(By.ID, "logs").text, "no logs shown")
    reviewers = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "select[name=reviewer] option")]
    check(reviewers == ["ann"], f"reviewers offered: {reviewers}")
    driver.save_screenshot(str(shots / "review.png"))

    status = decide(release_id, "release", "word counts, no rows")
    check("succeeded" in status, status)
    decision = driver.find_element(By.ID, "decision").text
    check("released by ann" in decision and "word counts, no rows" in decision, decision)
    driver.save_screenshot(str(shots / "decided.png"))

    status = decide(reject_id, "reject", "too fine-grained")
    check("rejected by reviewer ann: too fine-grained" in status, status)
    check(not driver.find_elements(By.ID, "decide"), "the form is still offered")
finally:
    driver.quit()
print("review page ok")
