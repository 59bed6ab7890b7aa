"""A real headless browser (Debian's chromium through Selenium and /usr/bin/chromedriver, nothing
downloaded) against `office serve --demo`: log in, import employees, top one up, register a unit,
and see that unit's sale and the employee's balance after the unit synced."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from test_office_support import FakeUnit, OfficeProcess, heartbeat_body

pytest.importorskip("django")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=412,900"]
pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and DRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium and chromium-driver: .ci/run installs them")
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(DRIVER)))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def submit(driver, button_id: str) -> None:
    """Click and wait until the next page replaced this one (an event, not a sleep)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, button_id).click()

    def replaced(d) -> bool:
        """The old document is gone and the new one loaded. While it is being swapped, chromedriver may say
        "Node with given id does not belong to the document" instead of a stale element: gone too."""
        try:
            page.tag_name
            return False
        except WebDriverException:
            return d.execute_script("return document.readyState") == "complete"

    WebDriverWait(driver, 60).until(replaced)


def test_manager_imports_tops_up_registers_a_unit_and_sees_its_sale(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from vendor_node.office.unit_client import UnitClient

    office = OfficeProcess(f"sqlite:///{tmp_path / 'office.db'}", None, demo=True).start()
    try:
        password = re.search(r"log in as demo / (\S+)", office.output()).group(1)
        b = browser
        b.get(office.base + "/employees/")
        assert "/login/" in b.current_url  # a login first
        b.find_element(By.ID, "id_username").send_keys("demo")
        b.find_element(By.ID, "id_password").send_keys(password)
        submit(b, "login")
        assert b.find_element(By.TAG_NAME, "h1").text == "Employees"

        csv_file = tmp_path / "staff.csv"
        csv_file.write_text("employee_id,display_name,funds\nW100,Wanda Browser,5.00\nW101,Walt Browser,1.00\n")
        b.find_element(By.ID, "employees_csv").send_keys(str(csv_file))
        submit(b, "import_employees")
        assert "2 added" in b.find_element(By.TAG_NAME, "main").text

        b.get(office.base + "/employees/W100/")
        b.find_element(By.ID, "topup_amount").send_keys("7.50")
        submit(b, "topup")
        assert b.find_element(By.ID, "balance").text == "12.50"

        unit = FakeUnit(tmp_path / "unit", "browser-unit")
        b.get(office.base + "/units/")
        b.find_element(By.ID, "unit_id").send_keys(unit.unit_id)
        b.find_element(By.ID, "fingerprint").send_keys(" ".join(re.findall("....", unit.fingerprint)))
        submit(b, "register_unit")
        assert "registered unit browser-unit" in b.find_element(By.TAG_NAME, "main").text

        unit.buy("W100", 180, item="14")  # a sale at the unit, then its nightly sync
        status, _ = UnitClient(office.base, unit.unit_id, unit.key).request("POST", "journal", unit.batch())
        assert status == 200
        b.get(office.base + "/employees/W100/")
        assert b.find_element(By.ID, "balance").text == "10.70"
        assert "browser-unit" in b.find_element(By.TAG_NAME, "main").text
        b.get(office.base + "/sales/?by=unit")
        table = b.find_element(By.ID, "sales").text
        assert "browser-unit 1 1.80" in table

        client = UnitClient(office.base, unit.unit_id, unit.key)  # its heartbeat: keys in software mode
        assert client.request("POST", "heartbeat", heartbeat_body(key_mode="software"))[0] == 200
        b.get(office.base + "/units/browser-unit/")
        assert b.find_element(By.ID, "key_mode").text == "software"
        b.find_element(By.ID, "no_sale_alert_h").send_keys("12")
        submit(b, "save_no_sale")
        assert "no-sale alert: after 12 h" in b.find_element(By.TAG_NAME, "main").text
        unit.close()
    finally:
        office.stop()
