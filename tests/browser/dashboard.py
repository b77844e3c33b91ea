"""The provider dashboard in a real browser: headless Debian Chromium driven
by Selenium through chromedriver (both from apt, never downloaded at run
time). Run by gateway/tests/cli.rs::the_dashboard_works_in_a_real_browser.

usage: dashboard.py BASE EXECUTION SCREENSHOTS_DIR REFUSING_BASE

BASE serves the dashboard to this (loopback) browser and ran EXECUTION;
REFUSING_BASE is a gateway reached over a non-loopback address, so the
browser there is a stranger without a token. Exits non-zero with the reason
when anything is missing; saves dashboard.png, execution.png, refused.png.
"""

import pathlib
import sys

from chromium import checker, start
from selenium.webdriver.common.by import By

base, execution, shots, refusing = sys.argv[1:5]
shots = pathlib.Path(shots)
shots.mkdir(parents=True, exist_ok=True)

driver, wait = start()
check = checker("dashboard")


try:
    # The executions, the status cards and the charts.
    driver.get(base + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{execution}"]'))
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{execution}"]').text
    check("succeeded" in row, f"the execution's row says {row!r}")
    chart = driver.find_element(By.CSS_SELECTOR, "svg#per-minute")
    check(chart.rect["width"] > 100 and chart.rect["height"] > 50, f"the chart is {chart.rect}")
    heights = [
        float(b.get_attribute("height"))
        for b in driver.find_elements(By.CSS_SELECTOR, "svg#per-minute rect.bar")
    ]
    check(len(heights) == 60 and max(heights) > 0, f"no bar drawn: {heights}")
    drawn = [
        b.rect["height"]
        for b in driver.find_elements(By.CSS_SELECTOR, "svg#latency rect.bar")
    ]
    check(any(h > 0 for h in drawn), f"the latency chart is empty: {drawn}")
    check(driver.find_elements(By.CSS_SELECTOR, "#datasets tr td"), "no dataset listed")
    driver.save_screenshot(str(shots / "dashboard.png"))

    # One execution: its logs arrive through EventSource, then the end.
    driver.get(f"{base}/?execution={execution}")
    log = driver.find_element(By.ID, "log")
    wait.until(lambda d: "words" in log.text)
    wait.until(lambda d: log.get_attribute("data-end") == "succeeded")
    driver.save_screenshot(str(shots / "execution.png"))

    # A browser elsewhere, without a token: refused.
    driver.get(refusing + "/")
    body = driver.find_element(By.TAG_NAME, "body").text
    check("insitu admin token" in body, f"a stranger saw {body[:200]!r}")
    check(not driver.find_elements(By.CSS_SELECTOR, "svg"), "a stranger saw a chart")
    driver.save_screenshot(str(shots / "refused.png"))
finally:
    driver.quit()
print("dashboard: ok")
