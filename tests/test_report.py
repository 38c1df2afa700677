"""The HTML report of a real smoke sweep (6 runs: 4 complete, one diverges, one fails inside its job), made by
the CLI and opened in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): every section,
table and figure is there (the results by setting, the claims' verdicts, the paper tables), the failed and
diverged runs show their reasons, sorting and filtering work, and the browser logs no error. A report of an
unfinished sweep says what has not finished; one whose runs fill no paper table still has its results table;
one with pruned runs has their pruning results."""
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import SMOKE, cli
from multirun_analysis import claims, render, tables
from multirun_analysis.load import load_runs
from multirun_analysis.report import build_report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Adam and SGD at L2 1e-4 (Fig. 2's pair, the difficulty table's clean row), no L2 (sparsity vs coefficient),
# batch 20 (Table 6, sparsity vs batch size); SGD at lr 1e30 diverges; batch 801 > 800 images fails in its job.
GRID = ("hydra.sweeper.grid=[{optimizer:[adam,sgd],regularizer.l2:1e-4},{regularizer.l2:0},{batch_size:20},"
        "{optimizer:sgd,optimizer.lr:1e30},{batch_size:801}]")
FAILED = "+experiment=smoke batch_size=801"
DIVERGED = "+experiment=smoke optimizer.lr=1e+30 optimizer=sgd"
FIGURES = ["fig2_bn_C6", "sparsity_vs_coefficient", "sparsity_vs_batch_size", "per_layer_sparsity", "selectivity",
           "sparsity_over_training"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    code, output = cli("sparsesweep", "-m", *SMOKE, GRID, f"hydra.sweep.dir={root}/sweep", cwd=root)
    assert code == 1, output  # a failed run: the sweep says so
    assert "completed 4, diverged 1, failed 1" in output
    return root / "sweep"


@pytest.fixture(scope="module")
def report(sweep):
    out = sweep.parent / "report.html"
    code, output = cli("multirun_analysis", "report", str(sweep), "--out", str(out), cwd=sweep.parent)
    assert code == 0, output
    return out


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, report):
    """The report freshly loaded; after the test, the browser must have logged no error."""
    browser.get(report.as_uri())
    yield browser
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors


def css(parent, selector):
    """The elements under the page or an element that match a CSS selector."""
    from selenium.webdriver.common.by import By

    return parent.find_elements(By.CSS_SELECTOR, selector)


def column(driver, header: str) -> list[str]:
    """The visible rows' cells under `header` of the run table, top to bottom."""
    headers = [th.text.rstrip(" ▲▼") for th in css(driver, "#run-table thead th")]
    position = headers.index(header) + 1
    return [td.text for td in css(driver, f"#run-table tbody tr:not([hidden]) td:nth-child({position})")]


@pytest.mark.slow
def test_every_section_table_and_figure_is_on_the_page(page, sweep, tmp_path):
    page.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s.get_attribute("id") for s in css(page, "section")] == ["sweeps", "results", "claims", "tables",
                                                                     "figures", "runs"]  # no run was pruned
    counts = {e.get_attribute("data-state"): e.text for e in css(page, "#sweeps .counts .state")}
    assert counts == {"completed": "4 completed", "failed": "1 failed", "diverged": "1 diverged"}
    # The device setting and the device each run logged (the failed run stopped before logging one).
    assert re.search(r"device=cpu → cpu \(5 runs\)", css(page, "#sweeps dl")[0].text)  # smoke: device=cpu
    assert re.search(r"made by sparsesweep \S+ .* \(cpu\) · host ", css(page, "#sweeps dl")[0].text)

    shown = {t.get_attribute("data-table"): t for t in css(page, ".paper-table")}
    assert list(shown) == ["table6", "difficulty"]  # the tables these runs fill, in the paper's order
    completed = load_runs([sweep], completed_only=True)
    for name, element in shown.items():
        spec = tables.TABLES[name]
        markdown = render.render(spec, tables.build(spec, completed), "markdown").split("\n")
        expected = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in markdown if line[:2] == "| "]
        rows = [[th.text for th in css(element, "th")]] + [[td.text for td in css(tr, "td")]
                                                            for tr in css(element, "tbody tr")]
        assert rows == expected  # the cells of `python -m multirun_analysis NAME --format markdown`
    assert "table1" in css(page, "#empty-tables")[0].text

    # The results by setting: the overrides without the seed, each a cell of `mean ±std (n)`.
    results = [[td.text for td in css(tr, "td")] for tr in css(page, "#results-table tbody tr")]
    assert len(results) == 4 and {row[0] for row in results} == {
        "+experiment=smoke optimizer=adam regularizer.l2=0.0001",
        "+experiment=smoke optimizer=sgd regularizer.l2=0.0001",
        "+experiment=smoke regularizer.l2=0", "+experiment=smoke batch_size=20"}
    assert all(re.fullmatch(r"\d+\.\d\d \(1\)", row[1]) for row in results)  # test error: 2 decimals, one run
    # The claims these runs speak to, as `claims` judges them (one seed: no interval, inconclusive).
    verdicts = claims.texts(claims.check(completed))
    judged = verdicts[verdicts.verdict != claims.NO_RUNS]
    shown = [[td.text for td in css(tr, "td")] for tr in css(page, "#claims-table tbody tr")]
    assert shown == judged.fillna("").values.tolist() and {"1", "2", "7"} <= {row[0] for row in shown}
    assert {tr.get_attribute("data-verdict") for tr in css(page, "#claims-table tbody tr")} <= set(claims.VERDICTS)
    assert "4 (sparsity grows with the L2 coefficient)" in css(page, "#claims-without-runs")[0].text

    figures = {f.get_attribute("data-figure"): f for f in css(page, "#figures figure")}
    assert list(figures) == FIGURES
    for figure in figures.values():
        (image,) = css(figure, "img")
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 100

    linked = [Path(unquote(urlparse(a.get_attribute("href")).path)) for a in css(page, "#run-table tbody a")]
    assert sorted(linked) == sorted(p.parent for p in sweep.glob("*/results.json")) and len(linked) == 6


@pytest.mark.slow
def test_failed_and_diverged_runs_are_shown_with_their_reasons(page):
    problems = {css(tr, ".run")[0].text: tr for tr in css(page, "#sweeps table.problems tbody tr")}
    assert set(problems) == {FAILED, DIVERGED}
    assert problems[FAILED].get_attribute("data-state") == "failed"
    assert css(problems[FAILED], ".reason")[0].text == \
        "batch_size=801 exceeds the 800 training images: lower batch_size"
    assert problems[DIVERGED].get_attribute("data-state") == "diverged"
    assert re.fullmatch(r"training loss not finite in epoch 1 \(by step \d+\): stopped",
                        css(problems[DIVERGED], ".reason")[0].text)
    runs = dict(zip(column(page, "run"), column(page, "status")))
    assert runs[FAILED] == "failed" and runs[DIVERGED] == "diverged" and list(runs.values()).count("completed") == 4


@pytest.mark.slow
def test_clicking_a_header_sorts_the_runs_and_the_filter_keeps_matching_ones(page):
    def header(name):
        (button,) = [th for th in css(page, "#run-table thead th button") if th.text.rstrip(" ▲▼") == name]
        return button

    header("test err %").click()
    errors = column(page, "test err %")
    numbers = [float(e) for e in errors if e != "–"]
    assert numbers == sorted(numbers) and len(set(numbers)) > 1 and errors[len(numbers):] == ["–", "–"]
    header("test err %").click()
    numbers = [float(e) for e in column(page, "test err %") if e != "–"]
    assert numbers == sorted(numbers, reverse=True)
    header("status").click()
    assert column(page, "status") == ["completed"] * 4 + ["diverged", "failed"]
    header("run").click()
    ascending = column(page, "run")
    header("run").click()
    assert column(page, "run") == ascending[::-1] and len(set(ascending)) == 6

    search = css(page, "#run-filter")[0]
    search.send_keys("sgd")
    assert sorted(column(page, "run")) == sorted([DIVERGED, "+experiment=smoke optimizer=sgd regularizer.l2=0.0001"])
    assert css(page, "#runs-shown")[0].text == "2 of 6 runs"
    search.send_keys(" diverged")
    assert column(page, "run") == [DIVERGED]


@pytest.mark.slow
def test_a_report_of_an_unfinished_sweep_shows_what_has_finished_and_says_what_has_not(sweep, tmp_path):
    unfinished = tmp_path / "sweep"
    shutil.copytree(sweep, unfinished)
    not_started = "+experiment=smoke,batch_size=20"
    shutil.rmtree(unfinished / not_started)  # planned (sweep_plan.json), no directory yet
    page = build_report([unfinished], tmp_path / "report.html")
    notice = re.search(r'<p class="unfinished">(.*?)</p>', page, re.S)
    assert notice and " ".join(notice.group(1).split()) == (
        "Not finished yet: 1 missing (of 6 runs). The tables and figures below show the runs that have completed.")
    row = re.search(r'<tr data-state="missing">(.*?)</tr>', page, re.S).group(1)
    assert "+experiment=smoke batch_size=20" in row and "<a " not in row  # listed, nothing to link to
    assert "From the 3 completed run(s)" in page


@pytest.mark.slow
def test_the_run_time_counts_each_runs_share_of_its_process_and_the_wall_time_of_older_runs(sweep, tmp_path):
    edited = tmp_path / "sweep"
    shutil.copytree(sweep, edited)
    for results_file in edited.glob("*/results.json"):
        results = json.loads(results_file.read_text())
        if results["status"] == "completed":  # e.g. four runs of one pack: each 1/4 of the pack's hour
            results.update(wall_time_s=3600.0, device_time_s=900.0)
        elif results["status"] == "diverged":  # written before device_time_s: trained alone
            results.pop("device_time_s")
            results["wall_time_s"] = 360.0
        results_file.write_text(json.dumps(results))
    page = build_report([edited], tmp_path / "report.html")
    run_time = re.search(r"<dt>run time</dt><dd>(.*?) <span", page).group(1)
    assert run_time == "CPU 1.10 h (3960 s)"


@pytest.mark.slow
def test_a_report_whose_runs_fill_no_paper_table_still_has_its_results(sweep, tmp_path):
    only_sgd = tmp_path / "sweep"
    shutil.copytree(sweep, only_sgd)
    for results_file in only_sgd.glob("*/results.json"):
        if json.loads(results_file.read_text()).get("optimizer") != "sgd":  # the failed stub has none
            shutil.rmtree(results_file.parent)
    page = build_report([only_sgd], tmp_path / "report.html")
    assert 'class="paper-table"' not in page and "No run fills table1, table2" in page
    rows = re.findall(r"<tr><td>([^<]*)</td>", page[page.index('id="results-table"'):page.index('id="claims"')])
    assert rows == ["+experiment=smoke optimizer=sgd regularizer.l2=0.0001"]  # the diverged one did not complete


@pytest.mark.slow
def test_a_report_of_pruned_runs_has_their_pruning_results(sweep, tmp_path):
    pruned = tmp_path / "sweep"
    shutil.copytree(sweep, pruned)
    run_dir = pruned / "+experiment=smoke,batch_size=20"
    run_id = json.loads((run_dir / "results.json").read_text())["run_id"]
    (run_dir / "prune.json").write_text(json.dumps({
        "schema": 1, "run_id": run_id, "threshold": 1e-3, "features": {"before": 232, "after": 174, "removed": 58},
        "params": {"before": 1000, "after": 400}, "flops": {"before": 5000, "after": 2000},
        "latency_ms": {"cpu": {"before": 3.0, "after": 1.5, "batch_size": 40, "repeats": 20}},
        "test_error": {"before": 20.0, "after": 20.5}, "test_top5_error": {"before": 2.0, "after": 2.5}}))
    test_error = json.loads((run_dir / "results.json").read_text())["test_error"]
    page = build_report([pruned], tmp_path / "report.html")
    section = page[page.index('<section id="pruning">'):page.index('<section id="figures">')]
    (row,) = re.findall(r"<tr><td class=\"run\">(.*?)</tr>", section, re.S)
    assert re.findall(r'<td class="number">([^<]*)</td>', row) == [
        "58", "25.0", f"{test_error:.2f}", "20.50", "40.0", "40.0", "2.00"]  # 58 of 232; no GPU column without one
    assert "+experiment=smoke batch_size=20" in row


@pytest.mark.slow
def test_the_report_says_what_made_the_runs_and_when_they_mix(sweep, tmp_path):
    from multirun_analysis.provenance import device, version
    from rundir_format import schema

    mixed = tmp_path / "sweep"
    shutil.copytree(sweep, mixed)
    made = schema.read(mixed / "+experiment=smoke,batch_size=20" / "results.json").provenance
    page = build_report([mixed], tmp_path / "report.html")
    header = re.search(r'<dd class="made-by">(.*?)</dd>', page, re.S).group(1)
    assert header == f"made by {version(made)} · {device(made)} · host {made.host}"
    results_file = mixed / "+experiment=smoke,batch_size=20" / "results.json"  # as if trained on a cluster's GPU
    results = json.loads(results_file.read_text())
    results["provenance"].update(device="cuda:0", device_name="NVIDIA H100 80GB HBM3", host="gpu07")
    results_file.write_text(json.dumps(results))
    page = build_report([mixed], tmp_path / "report.html")
    header = re.search(r'<dd class="made-by">(.*?)</dd>', page, re.S).group(1).split("<br>")
    assert header == [f"made by {version(made)} · 2 devices · 2 hosts",
                      f"mixed: these runs come from 2 devices ({device(made)}: 4 runs; NVIDIA H100 80GB HBM3 (cuda): 1 "
                      "run): compare like with like (split a table with --by device)"]  # the failed run: no device
    row = re.search(r'<a href="sweep/\+experiment=smoke,batch_size=20/">(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r'<td class="made-by">([^<]*)</td>', row) == [version(made), "NVIDIA H100 80GB HBM3 (cuda)",
                                                                    "gpu07"]
