"""Headless Chromium for the page's tests and benchmarks: Debian's `chromium` driven by
Selenium through Debian's `chromium-driver` (install.sh installs both; Selenium is in
pyproject.toml).  No browser download: the system's own."""
from __future__ import annotations

import shutil

from ..errors import PrerequisiteError


def chromium(width: int = 1600, height: int = 1000):
    """A headless Chromium WebDriver (the caller quits it)."""
    from selenium import webdriver  # lazy: only tests and benchmarks drive a browser
    from selenium.webdriver.chrome.service import Service
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        raise PrerequisiteError("chromium and chromedriver not found: install.sh installs chromium "
                                "chromium-driver (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # --no-sandbox: root (nslab runs as root) cannot use Chromium's setuid/user-namespace sandbox
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_script_timeout(60)
    return browser
