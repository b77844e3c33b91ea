"""Headless Debian Chromium through Debian's chromedriver (both from apt,
never downloaded at run time), as the browser tests drive it."""

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait


def start(width=1280, height=1400):
    """A driver and a 30 s wait for it."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver, WebDriverWait(driver, 30)


def checker(page):
    """check(ok, what): exits with `page: what` unless ok."""

    def check(ok, what):
        if not ok:
            raise SystemExit(f"{page}: {what}")

    return check
