"""The HTML report opened in a real headless Chromium (Debian's chromium + chromedriver,
driven by selenium): what a manager sees, that sorting and filtering work in the page,
that the chart is there, that hostile names stay text, and that the page makes no request."""
from __future__ import annotations

import json
import shutil

import pytest
from report_support import HOSTILE_NAME, failed_night

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("report-browser")
    sc, picked = failed_night(root)
    res = sc.runner("report", "--state", str(sc.state), "--format", "json")
    info = json.loads(res.out)
    html = root / "report.html"
    assert sc.runner("report", "--state", str(sc.state), "--format", "html", "-o", str(html)).code == 0
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", f"--user-data-dir={root / 'profile'}"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(html.as_uri())
        yield driver, info, picked, html.as_uri()
    finally:
        driver.quit()


def _rows(driver):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, "#users tbody tr")


def _header(driver, name):
    from selenium.webdriver.common.by import By
    return next(th for th in driver.find_elements(By.CSS_SELECTOR, "#users thead th") if th.text.strip() == name)


def _column(driver, name):
    """The texts of column ``name`` in the rows the browser displays, top to bottom."""
    return driver.execute_script(
        "var t=document.getElementById('users'),hs=t.tHead.rows[0].cells,i=-1;"
        "for(var k=0;k<hs.length;k++){if(hs[k].textContent.trim()===arguments[0])i=k;}"
        "return Array.prototype.filter.call(t.tBodies[0].rows,function(r){return r.offsetParent!==null;})"
        ".map(function(r){return r.cells[i].textContent.trim();});", name)


def test_the_page_shows_every_user_and_the_summary_counts(page):
    from selenium.webdriver.common.by import By
    driver, info, _, _ = page
    assert sorted(r.get_attribute("data-user") for r in _rows(driver)) == sorted(u["user"] for u in info["users"])
    cards = {c.get_attribute("data-key"): c.find_element(By.TAG_NAME, "b").text
             for c in driver.find_elements(By.CSS_SELECTOR, "#summary .card")}
    s = info["summary"]
    for key in ("users", "moved", "failed", "pending"):
        assert cards[key] == str(s[key]), key
    assert cards["contacts imported"] == str(s["contacts"]["imported"])
    causes = driver.find_elements(By.CSS_SELECTOR, "#causes li")
    assert [int(c.get_attribute("data-users")) for c in causes] == [c["users"] for c in s["causes"]]
    assert causes and all(c.is_displayed() for c in causes)
    assert dict(zip(_column(driver, "User"), _column(driver, "State"))) == {u["user"]: u["state"]
                                                                            for u in info["users"]}


def test_the_chart_is_an_inline_svg_with_the_wave_counts(page):
    from selenium.webdriver.common.by import By
    driver, info, _, _ = page
    svg = driver.find_element(By.CSS_SELECTOR, "svg#progress-chart")
    assert svg.is_displayed() and svg.size["width"] > 100
    bars = svg.find_elements(By.CSS_SELECTOR, "rect.bar")
    got = {(b.get_attribute("data-wave"), b.get_attribute("data-state")): int(b.get_attribute("data-count"))
           for b in bars}
    want = {(w["wave"], st): w[st] for w in info["waves"] for st in ("moved", "failed", "pending") if w[st]}
    assert got == want and len(got) >= 3


def test_clicking_a_header_sorts_the_table(page):
    driver, info, _, _ = page
    _header(driver, "User").click()
    assert _column(driver, "User") == sorted(u["user"] for u in info["users"])
    _header(driver, "User").click()
    assert _column(driver, "User") == sorted((u["user"] for u in info["users"]), reverse=True)
    _header(driver, "Exported").click()
    exported = [-1 if v == "-" else int(v) for v in _column(driver, "Exported")]
    assert exported == sorted(exported) and exported[0] < exported[-1]
    _header(driver, "Stands").click()
    stands = _column(driver, "Stands")
    assert stands[0] == "not started" and stands[-1] == "disabled on Exchange IM"


def test_typing_in_the_box_filters_the_rows(page):
    from selenium.webdriver.common.by import By
    driver, info, picked, _ = page
    box = driver.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(picked["renamed"])
    assert _column(driver, "User") == [picked["renamed"]]
    assert driver.find_element(By.ID, "shown").text == "1"
    box.clear()
    box.send_keys(picked["down"])
    shown = set(_column(driver, "User"))
    assert {u["user"] for u in info["users"] if any(m["host"] == picked["down"] for m in u["machines"])} <= shown
    assert len(shown) < len(info["users"])
    driver.execute_script("var b=document.getElementById('filter');b.value='';"
                          "b.dispatchEvent(new Event('input'));")
    assert len(_column(driver, "User")) == len(info["users"])


def test_a_hostile_display_name_stays_text(page):
    from selenium.webdriver.common.by import By
    driver, _, picked, _ = page
    row = driver.find_element(By.CSS_SELECTOR, f'#users tr[data-user="{picked["renamed"]}"]')
    assert row.find_elements(By.TAG_NAME, "td")[1].text == HOSTILE_NAME
    assert not row.find_elements(By.TAG_NAME, "b")
    assert driver.execute_script("return typeof window.pwned") == "undefined"


def test_opening_the_page_makes_no_network_request(page):
    driver, _, _, url = page
    driver.get_log("performance")  # drop what came before (the browser's own start-up pages)
    driver.get(url)
    requests = [m["params"]["request"]["url"] for m in
                (json.loads(e["message"])["message"] for e in driver.get_log("performance"))
                if m["method"] == "Network.requestWillBeSent"]
    assert requests == [url]
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
