"""The dashboard in headless Chromium against a running service with a real worker. Each test saves a screenshot
(test-artifacts/screenshots/<test>.png)."""

from __future__ import annotations

import re
import time

import pytest

from tests.dashboard.conftest import SHOTS
from tests.integration.stack import wait_until
from tests.specs import mlp, with_, xor

pytestmark = pytest.mark.integration


def chart_points(page, selector: str, attr: str = "data-points") -> int:
    return int(page.get_attribute(selector, attr) or 0)


def snap(page, name: str) -> None:
    """A screenshot of what the viewport shows at this moment (the README's pictures come from these)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def eventually(check, timeout: float = 20.0):
    """Poll from here: the page's CSP forbids the eval that page.wait_for_function would need."""
    return wait_until(check, timeout, "the page's state")


def test_submit_from_the_form_shows_errors_next_to_the_field_then_the_run(page, stack):
    page.goto(stack.url + "/submit")
    eventually(lambda: "digits" in page.input_value("#spec"))  # an example to start from
    text = page.input_value("#spec")
    page.fill("#spec", text.replace("lr: 0.", "lr: -0.", 1))
    page.click("#check")
    error = page.locator("#errors li[data-path='optimizer.lr']")
    error.wait_for()
    assert "greater than 0" in error.inner_text() and re.search(r"\(line \d+\)", error.inner_text())
    snap(page, "submit-errors")
    page.fill("#spec", re.sub(r"(?m)^name: .*$", "name: from-the-form", text, count=1))
    page.click("#check")
    page.locator("#valid").wait_for()
    assert int(page.locator("#plan tbody tr").count()) >= 3 and "parameters" in page.inner_text("#plan-totals")
    snap(page, "submit")
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    assert stack.job(job_id)["name"] == "from-the-form"
    page.goto(stack.url + "/")
    row = page.locator(f"#runs tr[data-id='{job_id}']")
    assert row.locator("td.name a").first.inner_text() == "from-the-form"
    assert row.locator("td.name small.id").inner_text() == row.get_attribute("data-id")[:6]
    row.locator(".badge.succeeded").wait_for(timeout=60_000)  # the row goes live to succeeded, no reload


def test_a_new_run_appears_in_the_table_without_a_reload(page, stack):
    page.goto(stack.url + "/")
    page.locator("#runs").wait_for()
    marker = page.evaluate("window.__marker = Math.random()")
    job_id = stack.submit(with_(mlp(epochs=2), name="appears-live"))
    page.locator(f"#runs tr[data-id='{job_id}'] td.name").wait_for()
    assert page.evaluate("window.__marker") == marker  # the same document: no reload happened
    assert page.locator("#runs tbody tr").first.get_attribute("data-id") == job_id
    total = stack.get("/api/v1/jobs?limit=1&sweep=none")["total"]  # the page leaves sweeps' trials out
    assert page.inner_text("#page-info").endswith(f"of {total}")
    page.locator(f"#runs tr[data-id='{job_id}'] .badge.succeeded").wait_for(timeout=60_000)
    # no early stopping: the run is judged by val_loss, and the column shows its lowest value
    lowest = min(stack.get(f"/api/v1/jobs/{job_id}/metrics?names=val_loss")["series"]["val_loss"]["value"])
    assert page.inner_text(f"#runs tr[data-id='{job_id}'] td.best") == f"val_loss {lowest:.4f}"


def test_the_curves_grow_while_the_run_trains_and_the_best_epoch_is_kept(page, stack):
    job_id = stack.submit(with_(mlp(hidden=(256, 256), epochs=1000, batch_size=16), name="watch-it-grow"))  # cancelled
    stack.wait(job_id, until=lambda j: j["status"] == "running" and j["epoch"] >= 2)
    page.goto(f"{stack.url}/jobs/{job_id}")
    first = eventually(lambda: chart_points(page, "#chart-loss"))
    eventually(lambda: chart_points(page, "#chart-loss") > first + 4)
    snap(page, "run")
    assert page.locator("#chart-loss canvas").count() == 1
    assert int(page.inner_text("#job-epoch")) >= 2
    assert page.locator("#model-summary tbody tr").count() >= 4  # input + dense, relu, dense, relu, dense
    assert "[10]" in page.inner_text("#model-summary")
    page.locator("#events div").first.wait_for()
    assert "claimed by worker@test" in page.inner_text("#events")
    stack.http.post(f"{stack.url}/api/v1/jobs/{job_id}/cancel", timeout=10)
    page.locator("#job-status.cancelled").wait_for(timeout=30_000)


def test_cancel_a_second_job_from_its_page(page, stack):
    long = stack.submit(with_(mlp(hidden=(256, 256), epochs=500, batch_size=16), name="first-long"))
    second = stack.submit(with_(mlp(epochs=500), name="second-to-cancel"))
    page.goto(f"{stack.url}/jobs/{second}")
    assert page.inner_text("#job-status") == "queued"
    eventually(lambda: "busy" in page.inner_text("#job-waiting"))  # the one worker runs the first job
    page.click("#cancel")
    page.locator("#job-status.cancelled").wait_for()
    assert stack.job(second)["status"] == "cancelled" and stack.job(second)["attempts"] == 0
    assert page.locator("#cancel").is_hidden()
    stack.http.post(f"{stack.url}/api/v1/jobs/{long}/cancel", timeout=10)
    stack.wait(long)


def test_compare_two_runs_overlays_their_curves_and_shows_what_differs(page, stack):
    a = stack.submit(with_(mlp(epochs=6), name="compare-a"))
    b = stack.submit(with_(mlp(epochs=6), **{"name": "compare-b", "optimizer.lr": 0.003}))
    stack.wait(a), stack.wait(b)
    page.goto(stack.url + "/?name=compare-")
    page.check(f"#runs tr[data-id='{a}'] input.pick")
    page.check(f"#runs tr[data-id='{b}'] input.pick")
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r".*/compare\?ids="))
    eventually(lambda: chart_points(page, "#chart-compare", "data-series") == 2)
    assert chart_points(page, "#chart-compare") == 12  # 6 epochs of val_loss for each run
    headers = page.locator("#compare-table thead th").all_inner_texts()
    assert "optimizer.lr" in headers and "test_accuracy" in headers
    assert page.locator("#compare-table tbody tr").count() == 2
    column = headers.index("optimizer.lr")
    rows = page.locator("#compare-table tbody tr")
    lr = {rows.nth(i).locator("td a").first.inner_text(): rows.nth(i).locator("td").nth(column) for i in range(2)}
    assert lr["compare-b"].inner_text() == "0.003"
    assert lr["compare-a"].inner_text() == str(mlp()["optimizer"]["lr"])
    assert "differs" in lr["compare-a"].get_attribute("class")
    # the same architecture: the learning rate is the only difference, and the test metrics come before it
    assert [h for h in headers if "." in h] == ["optimizer.lr"]
    assert headers.index("test_accuracy") < headers.index("optimizer.lr")
    assert page.locator("#compare-table").bounding_box()["width"] <= 1400
    # the menu offers what the runs reported: a classification run has accuracy, never R² or MAE
    menu = page.locator("select[name=metric] option").all_inner_texts()
    assert {"val_loss", "train_loss", "val_accuracy", "train_loss_step"} <= set(menu)
    assert not {"val_r2", "val_mae", "train_accuracy"} & set(menu)


def test_the_worker_is_on_the_workers_page(page, stack):
    page.goto(stack.url + "/workers")
    row = page.locator("#workers tr[data-name='worker@test']")
    row.wait_for()
    assert row.locator(".badge").inner_text() == "online"
    assert "cpu" in row.inner_text()
    assert page.locator("#pools tbody tr").first.inner_text().startswith("cpu")


def test_a_run_named_like_a_script_shows_as_text(page, stack):
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    name = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    job_id = stack.submit(with_(mlp(epochs=1), name=name))
    page.goto(stack.url + "/")
    assert page.locator(f"#runs tr[data-id='{job_id}'] td.name a").first.inner_text() == name
    page.goto(f"{stack.url}/jobs/{job_id}")
    assert page.inner_text("#job-name") == name
    page.goto(f"{stack.url}/compare?ids={job_id}")
    page.locator("#compare-table tbody tr").wait_for()
    assert page.locator("#compare-table tbody tr td a").first.inner_text() == name
    time.sleep(0.5)
    assert dialogs == []


def test_the_sweep_page_shows_trials_parameters_and_curves(page, stack):
    body = {"name": "sweep-page", "base": mlp(epochs=9, batch_size=64),
            "search": {"optimizer.lr": {"choice": [0.0003, 0.003, 0.03]}, "model.layers[0].units": {"choice": [16, 64]}},
            "method": "grid", "parallel": 2, "metric": "val_accuracy", "pruner": {"type": "asha"}}
    answer = stack.http.post(f"{stack.url}/api/v1/sweeps", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["id"]
    page.goto(stack.url + "/sweeps")
    page.click(f"#sweeps tr[data-id='{sweep_id}'] a")
    page.wait_for_url(f"{stack.url}/sweeps/{sweep_id}")
    page.locator("#sweep-status.succeeded").wait_for(timeout=120_000)
    assert page.locator("#trials tbody tr").count() == 6
    headers = page.locator("#trials thead th").all_inner_texts()
    assert set(headers[2:4]) == {"optimizer.lr", "model.layers[0].units"} and "val_accuracy" in headers
    state = stack.get(f"/api/v1/sweeps/{sweep_id}")
    assert state["direction"] == "maximize"
    eventually(lambda: chart_points(page, "#chart-trials", "data-series") == 6)
    assert page.get_attribute("#parallel", "data-lines") == "6"
    assert page.locator("#param-charts figure").count() == 2
    # every trial that reported the metric is a point on each parameter's chart, the learning rates (0.0003 to 0.03)
    # on a log axis, and the parallel coordinates carry their axes' values
    scored = sum(1 for t in state["trials"] if t["value"] is not None)
    for param, scale in (("optimizer.lr", "log"), ("model.layers[0].units", "linear")):
        canvas = page.locator(f'#param-charts figure[data-param="{param}"] canvas')
        assert canvas.get_attribute("data-points") == str(scored) and canvas.get_attribute("data-scale") == scale
    assert int(page.get_attribute("#parallel", "data-values")) >= 6  # two ends of each of the three axes
    best_row = page.locator("#trials tbody tr.best")
    assert best_row.get_attribute("data-trial") == str(state["best"]["trial"])


def test_a_sweep_that_cannot_pack_says_why_on_its_page(page, stack):
    base = {"name": "adding", "dataset": {"name": "adding", "sequence_length": 8, "n_samples": 100},
            "model": {"layers": [{"type": "gru", "units": 4}, {"type": "dense", "units": 1}]},
            "loss": {"type": "mse"}, "optimizer": {"type": "adam", "lr": 0.01}, "training": {"epochs": 1}}
    body = {"name": "sequence-sweep", "base": base, "search": {"optimizer.lr": {"choice": [0.001, 0.01]}},
            "method": "grid", "parallel": 2, "metric": "val_loss", "pack": "auto"}
    answer = stack.http.post(f"{stack.url}/api/v1/sweeps", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    page.goto(f"{stack.url}/sweeps/{answer.json()['id']}")
    page.locator("#trials tbody td.packed").first.wait_for()
    assert ("packing auto: 0 of 2 trials packed (dataset: sequences (steps x features) are not stacked yet"
            in page.inner_text("#sweep-facts"))
    assert page.locator("#trials tbody td.packed").first.get_attribute("title").startswith("not packed: dataset:")


def test_a_packed_sweep_says_who_trained_together_on_its_page_and_each_run_page(page, stack):
    body = {"name": "packed-page", "base": mlp(epochs=4, batch_size=64),
            "search": {"optimizer.lr": {"choice": [0.0003, 0.001, 0.003, 0.01]}}, "method": "grid", "parallel": 4,
            "metric": "val_loss", "pack": "auto"}
    answer = stack.http.post(f"{stack.url}/api/v1/sweeps", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    sweep_id = answer.json()["id"]
    page.goto(f"{stack.url}/sweeps/{sweep_id}")
    page.locator("#sweep-status.succeeded").wait_for(timeout=120_000)
    assert page.locator("#trials thead th").last.inner_text() == "packed with"
    cells = page.locator("#trials tbody td.packed").all_inner_texts()
    assert cells == ["#1 #2 #3", "#0 #2 #3", "#0 #1 #3", "#0 #1 #2"]
    assert "packing auto: 4 of 4 trials packed" in page.inner_text("#sweep-facts")
    snap(page, "sweep-packed")
    page.goto(f"{stack.url}/sweeps/{sweep_id}")  # a finished sweep, opened again: final, not live
    assert page.inner_text(".live") == "final"
    eventually(lambda: "best completed trial" in page.inner_text("#sweep-facts"))  # filled by the page's script
    page.click("#trials tbody tr[data-trial='2'] a")
    page.locator("#job-packed").wait_for()
    assert page.inner_text("#job-packed") == "packed with trial 0, trial 1, trial 3"
    page.locator("#checkpoints tbody tr").first.wait_for()  # a member checkpoints at its last epoch, as its own job
    eventually(lambda: chart_points(page, "#chart-loss") >= 8)  # its own curves: 4 epochs of train and val loss
    snap(page, "run-packed")
    page.click("#job-packed a >> nth=1")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]{32}$"))
    assert page.inner_text("#job-packed") == "packed with trial 0, trial 2, trial 3"


# ---------------------------------------------------------------------------------------------------------------------
# What a new user met (issue 16): each page point, in Chromium
# ---------------------------------------------------------------------------------------------------------------------


def test_a_failed_check_lists_every_error_at_its_line_and_clears_the_last_dry_run(page, stack):
    page.goto(stack.url + "/submit")
    eventually(lambda: "digits" in page.input_value("#spec"))
    page.click("#check")
    page.locator("#valid").wait_for()
    assert page.locator("#plan tbody tr").count() >= 3
    spec = ("name: broken\ndataset: {name: digits}\nmodel:\n  layers:\n    - {type: dense, units: 64}\n"
            "    - {type: activation, fn: relu}\n    - type: dense\n      units: 7\nloss: {type: cross_entropy}\n"
            "training:\n  epoch: 3\n")
    page.fill("#spec", spec)
    page.click("#check")
    page.locator("#errors li[data-path='model.layers[2]']").wait_for()
    lines = {li.get_attribute("data-path"): li.get_attribute("data-line") for li in page.locator("#errors li").all()}
    assert lines == {"optimizer": "", "training.epoch": "11", "model.layers[2]": "7"}  # the layer's own line
    assert "did you mean 'epochs'" in page.inner_text("#errors")
    assert page.locator("#plan tbody tr").count() == 0 and page.is_hidden("#valid")  # no stale dry run beside them
    assert "No dry run" in page.inner_text("#plan-totals")
    page.fill("#spec", "name: x\nmodel: {layers: [\n  - a\n")
    page.click("#check")
    page.locator("#errors li[data-path='(body)']").wait_for()
    assert page.locator("#errors li").get_attribute("data-line") == "3"
    assert "(line 3, column 3)" in page.inner_text("#errors") and "byte string" not in page.inner_text("#errors")
    snap(page, "submit-errors")


def test_a_graph_dry_run_shows_what_each_layer_reads_and_the_layer_types_are_listed(page, stack):
    page.goto(stack.url + "/submit")
    eventually(lambda: page.locator("#example option[value='resnet8']").count() == 1)
    page.select_option("#example", "resnet8")
    page.click("#check")
    page.locator("#valid").wait_for()
    rows = [[td.inner_text() for td in tr.locator("td").all()] for tr in page.locator("#plan tbody tr").all()]
    assert rows[0][1:3] == ["in", "input"] and rows[0][4] == "[3,32,32]"
    # a block's add reads its main path and the block's input: the stem's output, then the previous block's
    adds = [row for row in rows if row[2] == "add"]
    assert len(adds) == 3 and all(", " in row[3] for row in adds)
    assert adds[1][4] == "[32,16,16]" and rows[-1][2] == "dense" and rows[-1][4] == "[6]"
    page.click("#layer-types summary")
    lstm = page.locator("#layer-types li[data-type='lstm']")
    assert "long short-term memory" in lstm.inner_text() and "units integer (required)" in lstm.inner_text()
    assert "return last|sequence (default \"last\")" in lstm.inner_text()
    assert page.locator("#layer-types > ul > li").count() == len(stack.get("/api/v1/layers")["layers"])
    snap(page, "submit-graph")
    page.locator("#layer-types li[data-type='embedding']").scroll_into_view_if_needed()
    snap(page, "submit-layer-types")


def test_a_regression_run_page_shows_r2_and_mae_apart_and_no_confusion_matrix(page, stack):
    spec = with_(mlp("diabetes", outputs=1, epochs=6), **{"loss": {"type": "mse"}, "name": "regression-page"})
    job_id = stack.submit(spec)
    stack.wait(job_id)
    page.goto(f"{stack.url}/jobs/{job_id}")
    eventually(lambda: chart_points(page, "#chart-error") > 0)
    assert page.inner_text("#metric-caption") == "R² per epoch"
    assert chart_points(page, "#chart-metric") == 6 and chart_points(page, "#chart-error") == 6  # val R², val MAE
    assert page.is_visible("#fig-error") and page.is_hidden("#confusion-section")
    assert "Shown when" not in page.inner_text("body")
    assert page.locator("#final-metrics tr").count() >= 4 and page.is_hidden("#fig-lr")  # no schedule: no lr chart
    # the spec table holds what applies: diabetes has no classes, dense layers no activation parameters
    table = page.inner_text("#spec-table")
    assert "dataset.val_fraction" in table and "dataset.classes" not in table and ".alpha" not in table


def test_a_scheduled_run_page_charts_the_learning_rate_log_losses_and_latest_values(page, stack):
    spec = with_(mlp(epochs=300, batch_size=16), **{"name": "scheduled-page", "schedule": {"type": "cosine"},
                                                     "training.early_stopping": {"monitor": "val_accuracy",
                                                                                 "patience": 1000}})
    job_id = stack.submit(spec)
    stack.wait(job_id, until=lambda j: j["status"] == "running" and j["epoch"] >= 3)
    page.goto(f"{stack.url}/jobs/{job_id}")
    eventually(lambda: chart_points(page, "#chart-lr") >= 3)
    assert page.is_visible("#fig-lr")
    # judged by val_accuracy: the best-epoch marker is on the accuracy chart, not on the loss chart
    eventually(lambda: page.get_attribute("#chart-metric", "data-marker"))
    assert page.get_attribute("#chart-loss", "data-marker") is None
    assert page.is_visible("#job-eta-box")
    assert re.fullmatch(r"[\d.]+ (s|min \d+ s|h \d+ min)", page.inner_text("#job-eta"))
    assert page.inner_text("#job-duration-label") == "elapsed"
    assert re.search(r"\d{4}-\d\d-\d\d \d{1,2}:\d\d:\d\d \S+", page.inner_text("#job-started"))  # with its zone
    legend = page.locator("#chart-loss .u-legend").inner_text()
    assert "--" not in legend and re.search(r"val_loss:?\s*[\d.]+", legend)  # latest values, not dashes
    page.check("#loss-log")
    eventually(lambda: page.get_attribute("#chart-loss", "data-log") == "1")
    assert page.locator("#chart-loss canvas").count() == 1
    snap(page, "run")
    stack.http.post(f"{stack.url}/api/v1/jobs/{job_id}/cancel", timeout=10)
    stack.wait(job_id)


def test_start_a_sweep_from_the_form(page, stack):
    page.goto(stack.url + "/sweeps")
    text = page.input_value("#sweep-spec")
    box = page.locator("#sweep-spec")  # the width of the page, monospace, lines unwrapped (it was about 180 px)
    main_width = page.evaluate("document.querySelector('main').clientWidth")
    assert box.evaluate("b => b.getBoundingClientRect().width") >= 0.9 * main_width
    assert box.evaluate("b => getComputedStyle(b).whiteSpace") == "pre"
    assert "monospace" in box.evaluate("b => getComputedStyle(b).fontFamily")
    assert "log_uniform" in text and "pruner" in text
    page.fill("#sweep-spec", text.replace("trials: 8", "trials: 0"))
    page.click("#start-sweep")
    page.locator("#sweep-errors li[data-path='trials']").wait_for()
    small = re.sub(r"(?m)^  training:\n(    .*\n)*", "", text).replace("trials: 8", "trials: 2")
    page.fill("#sweep-spec", small.replace("base:\n", "base:\n  training: {epochs: 2}\n", 1))
    page.click("#start-sweep")
    page.wait_for_url(re.compile(r".*/sweeps/[0-9a-f]{32}$"))
    sweep_id = page.url.rsplit("/", 1)[1]
    assert stack.get(f"/api/v1/sweeps/{sweep_id}")["trials_total"] == 2
    stack.http.post(f"{stack.url}/api/v1/sweeps/{sweep_id}/cancel", timeout=10)


def test_upload_a_dataset_from_its_page_see_its_profile_and_delete_it(page, stack, tmp_path):
    rows = ["id,plan,a,b,label"] + [f"C{i:03d},{['pro', 'free', 'team'][i % 3] if i % 5 else ''},{i % 7},{(i * 3) % 5},"
                                    f"{'yes' if i % 2 else 'no'}" for i in range(40)]
    (tmp_path / "people.csv").write_text("\n".join(rows) + "\n")
    page.goto(stack.url + "/datasets")
    page.set_input_files("#upload-form input[name=file]", str(tmp_path / "people.csv"))
    page.fill("#upload-form input[name=name]", "people-from-the-page")
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/datasets/people-from-the-page@1$"))
    assert page.inner_text("#title").startswith("people-from-the-page@1")
    plan = page.locator("#columns tr[data-column='plan']")
    assert "category" in plan.inner_text() and "8 (20.0%)" in plan.inner_text()  # missing, with its share
    assert "identifier" in page.inner_text("#columns tr[data-column='id']")
    bars = page.locator("#classes .bar")
    eventually(lambda: bars.first.evaluate("b => b.getBoundingClientRect().width") > 50)  # drawn by the script
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    snap(page, "dataset-table")
    page.goto(stack.url + "/datasets")
    row = page.locator("#datasets tbody tr", has_text="people-from-the-page")
    assert "classification" in row.inner_text() and "latest" in row.inner_text() and "no, yes" in row.inner_text()
    snap(page, "datasets")
    page.set_input_files("#upload-form input[name=file]", str(tmp_path / "people.csv"))
    page.fill("#upload-form input[name=name]", "people-from-the-page")
    page.click("#upload-form button[type=submit]")  # the same bytes again: the version they already are
    page.wait_for_url(re.compile(r".*/datasets/people-from-the-page@1$"))
    page.goto(stack.url + "/datasets")
    page.on("dialog", lambda d: d.accept())
    row.locator("button.delete").click()
    row.wait_for(state="detached")
    assert [d["name"] for d in stack.get("/api/v1/datasets")["datasets"]] == []


def test_an_image_datasets_page_shows_its_classes_and_sample_images(page, stack):
    import io
    import zipfile

    from tests.integration.test_datasets_on_workers import picture

    rng = __import__("numpy").random.default_rng(1)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for kind in ("circle", "square", "triangle"):
            for i in range(6):
                z.writestr(f"shapes/{kind}/{i}.png", picture(kind, rng))
        z.writestr("shapes/notes.txt", "not an image")
    answer = stack.http.post(f"{stack.url}/api/v1/datasets", params={"name": "pictures"}, data=archive.getvalue(),
                             timeout=30)
    assert answer.status_code == 201, answer.text
    page.goto(stack.url + "/datasets/pictures")
    images = page.locator("#samples img")
    assert images.count() == 12  # four a class
    eventually(lambda: all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(12)))
    assert "shapes/notes.txt" in page.inner_text("#unreadable")
    assert "40x40" in page.inner_text("main")
    snap(page, "dataset-images")
    stack.http.delete(f"{stack.url}/api/v1/datasets/pictures@1", timeout=10)


def test_the_workers_page_says_how_long_ago_a_worker_was_seen(page, stack):
    page.goto(stack.url + "/workers")
    seen = page.locator("#workers tr[data-name='worker@test'] td.seen")
    seen.wait_for()
    assert re.fullmatch(r"\d+ s ago", seen.inner_text())
    assert page.locator("link[rel=icon]").count() == 1


def test_a_dozen_runs_compared_each_get_a_colour_of_their_own(page, stack):
    ids = [stack.submit(with_(xor(), **{"name": f"colour-{i}", "training.epochs": 3, "training.seed": i}))
           for i in range(12)]
    for job_id in ids:
        stack.wait(job_id)
    page.goto(f"{stack.url}/compare?ids={','.join(ids)}&metric=train_loss")
    eventually(lambda: chart_points(page, "#chart-compare", "data-series") == 12)
    colours = [m.evaluate("e => getComputedStyle(e).borderColor")
               for m in page.locator("#chart-compare .u-legend .u-marker").all()][1:]  # the first is the x axis's
    assert len(colours) == 12 and len(set(colours)) == 12, colours


def test_register_a_run_then_promote_diff_and_try_it_on_the_models_page(page, stack):
    iris = with_(mlp("iris", outputs=3, epochs=30), **{"training.batch_size": 16})
    first = stack.wait(stack.submit(iris))
    second = stack.wait(stack.submit(with_(iris, **{"optimizer.lr": 0.01})))
    assert first["status"] == second["status"] == "succeeded", stack.logs()
    page.goto(f"{stack.url}/jobs/{first['id']}")
    page.click("#register")  # a form, not the browser's prompt(): a name and an alias
    assert page.is_visible("#register-form") and not page.is_visible("#register-checkpoint")
    page.fill("#register-form input[name=name]", "iris-model")
    page.fill("#register-form input[name=alias]", "challenger")
    page.click("#register-form button[type=submit]")
    page.wait_for_url(f"{stack.url}/models/iris-model")
    assert stack.get("/api/v1/models/iris-model")["aliases"] == {"challenger": 1}
    page.goto(f"{stack.url}/jobs/{first['id']}")
    assert "registered as iris-model version 1" in page.inner_text("#job-versions")
    stack.http.post(f"{stack.url}/api/v1/models", json={"name": "iris-model", "job_id": second["id"]}, timeout=10)
    eventually(lambda: all(v["state"] == "ready" for v in stack.get("/api/v1/models/iris-model")["versions"])
               and len(stack.get("/api/v1/models/iris-model")["versions"]) == 2, 120)
    page.goto(f"{stack.url}/models/iris-model")
    assert page.get_attribute("#versions tr[data-version='2']", "data-state") == "ready"
    header = page.inner_text("#versions thead")
    assert "test_accuracy" in header
    assert f"{second['metrics']['test_accuracy']:.4f}" in page.inner_text("#versions tr[data-version='2']")
    assert "0.001" in page.inner_text("#spec-diff") and "0.01" in page.inner_text("#spec-diff")  # v1 against v2

    page.click("#versions tr[data-version='1'] button.promote")
    page.locator("[data-alias='champion']").wait_for()
    assert page.inner_text("[data-alias='champion']") == "champion → 1"
    assert stack.get("/api/v1/models/iris-model")["aliases"] == {"challenger": 1, "champion": 1}

    # The form is made from the champion's signature: the four features, each with its training range
    assert page.locator("#try-form input").count() == 4
    low, high = stack.get("/api/v1/models/iris-model@champion")["ranges"]["petal length (cm)"]
    assert f"petal length (cm)\n{low:g} … {high:g}" in page.inner_text("#try-form")
    for name, value in (("sepal length", "5.1"), ("sepal width", "3.5"), ("petal length", "1.4"),
                        ("petal width", "0.2")):  # a textbook setosa
        page.fill(f"#try-form input[name='{name} (cm)']", value)
    page.click("#try-form button[type=submit]")
    page.locator("#try-result tr").wait_for()
    assert page.inner_text("#try-result td.answer") == "setosa"
    assert "setosa" in page.inner_text("#try-result td >> nth=2")
    snap(page, "models")


def test_a_bayesian_regression_run_draws_its_band_and_a_classifier_its_reliability(page, stack):
    from tests.models.test_bayes import bnn, mc_dropout_mlp

    sine = with_(mc_dropout_mlp(0.1, 0, "gap_sine", outputs=1, epochs=40, units=32), **{"dataset.n_samples": 300})
    digits = with_(bnn(hidden=(64,)), **{"training.epochs": 6, "training.batch_size": 32})
    sine_job, digits_job = stack.wait(stack.submit(sine), timeout=120), stack.wait(stack.submit(digits), timeout=120)
    assert sine_job["status"] == digits_job["status"] == "succeeded", stack.logs()
    page.goto(f"{stack.url}/jobs/{sine_job['id']}")
    assert page.locator("#predictive-curve circle.train").count() >= 150
    assert len(page.get_attribute("#predictive-curve polyline.mean", "points").split()) == 200
    assert "test_coverage95" in page.inner_text("#final-metrics")
    assert page.locator("#predictive-curve text.axis").all_text_contents() == ["input x", "target y"]
    note = page.inner_text("#regions-note")  # why the whole test split's R² says little, and the regions' figures
    assert "test_r2 over all of them says little" in note and "in: RMSE" in note and "farther: RMSE" in note
    page.locator("#predictive-curve").scroll_into_view_if_needed()
    snap(page, "bayes-band")
    page.goto(f"{stack.url}/jobs/{digits_job['id']}")
    bins = page.locator("#reliability rect.bin")
    counts = [int(c) for c in bins.evaluate_all("els => els.map(e => e.dataset.count)")]
    assert sum(counts) == 270
    labels = [int(t) for t in page.locator("#reliability text.count").all_text_contents()]
    assert labels == counts  # each bin says how many rows it holds, and a bin of few rows is pale
    shades = [float(o) for o in bins.evaluate_all("els => els.map(e => e.getAttribute('fill-opacity'))")]
    assert shades[counts.index(max(counts))] == 0.95 and min(shades) < 0.95
    eventually(lambda: page.is_visible("#fig-kl") and page.is_visible("#fig-calibration")
               and "train_nll" in page.inner_text("#chart-loss"))
    legend = page.inner_text("#chart-loss")  # the data term beside val_loss, not train_loss with its KL
    assert "val_loss" in legend and "train_loss" not in legend
    page.locator("#reliability").scroll_into_view_if_needed()
    snap(page, "bayes-reliability")


def test_an_ensemble_with_learned_noise_draws_its_band_and_shows_its_members(page, stack):
    layers = [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
              {"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"}, {"type": "dense", "units": 2}]
    spec = {"name": "gap-ensemble-learned", "dataset": {"name": "gap_sine", "n_samples": 400, "seed": 0},
            "model": {"layers": layers}, "loss": {"type": "gaussian_nll"}, "optimizer": {"type": "adam", "lr": 0.005},
            "training": {"epochs": 40, "batch_size": 32, "seed": 0},
            "inference": {"method": "ensemble", "members": 4, "noise": "learned"}}
    job = stack.wait(stack.submit(spec), timeout=120)
    assert job["status"] == "succeeded", stack.logs()
    page.goto(f"{stack.url}/jobs/{job['id']}")
    assert page.locator("#predictive-curve circle.train").count() >= 150
    low = [float(p.split(",")[1]) for p in page.get_attribute("#predictive-curve polygon.band", "points").split()]
    assert max(low) - min(low) > 0  # a band, not a line
    spec_text = page.inner_text("body")
    assert "inference.members" in spec_text and "inference.samples" not in spec_text
    page.locator("#predictive-curve").scroll_into_view_if_needed()
    snap(page, "ensemble-band")


def test_a_pruned_run_page_offers_no_cancel(page, stack):
    """The page's script knew succeeded, failed and cancelled as the end of a run, not pruned: a sweep's pruned
    trial showed a Cancel button (and its page polled on). The states now come from the service."""
    job = stack.submit(with_(mlp(epochs=5), name="pruned-by-hand", resources={"pool": "nobody-serves-this"}))
    worker = {"Authorization": "Bearer integration-token"}
    claim = stack.http.post(f"{stack.url}/api/v1/worker/jobs/{job}/claim", json={"worker": "by-hand"},
                            headers=worker, timeout=10).json()
    ended = stack.http.post(f"{stack.url}/api/v1/worker/attempts/{claim['attempt_id']}/finish",
                            json={"status": "pruned", "stop_reason": "pruned", "epoch": 1, "metrics": {}},
                            headers={**worker, "X-Trainq-Attempt-Token": claim["token"]}, timeout=10)
    assert ended.status_code == 200, ended.text
    page.goto(f"{stack.url}/jobs/{job}")
    page.locator("#job-status.pruned").wait_for()
    page.wait_for_timeout(1500)  # a poll of the page's own
    assert page.locator("#cancel").is_hidden()
    assert page.get_attribute("body", "data-finished").split() == ["succeeded", "failed", "cancelled", "pruned"]


def test_every_page_fits_a_1400_px_window(page, stack):
    """With a real run, a Bayesian run, a 12-trial sweep, two model versions of different architectures and a
    dataset: no page is wider than the window (the model page's spec diff was 1,843 px wide)."""
    cnn = {"name": "wide-cnn", "dataset": {"name": "digits", "as_images": True, "seed": 0},
           "model": {"layers": [{"type": "conv2d", "out_channels": 8, "padding": "same"},
                                {"type": "batchnorm"}, {"type": "activation", "fn": "relu"}, {"type": "pool"},
                                {"type": "conv2d", "out_channels": 16, "padding": "same"},
                                {"type": "activation", "fn": "relu"}, {"type": "dropout", "p": 0.1},
                                {"type": "flatten"}, {"type": "dense", "units": 32},
                                {"type": "activation", "fn": "relu"}, {"type": "dense", "units": 10}]},
           "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam"},
           "training": {"epochs": 2, "batch_size": 64, "seed": 0}, "register_as": "wide-model"}
    mlp_run = stack.wait(stack.submit(with_(mlp(epochs=2), register_as="wide-model")))
    cnn_run = stack.wait(stack.submit(cnn))
    bayes = stack.wait(stack.submit({**mlp(epochs=2), "name": "wide-bayes", "inference": {"method": "ensemble",
                                                                                          "members": 2}}))
    sweep = stack.http.post(f"{stack.url}/api/v1/sweeps", timeout=30, json={
        "name": "a dozen trials", "base": mlp(hidden=(8,), epochs=1, batch_size=256), "method": "random",
        "trials": 12, "parallel": 12, "metric": "val_accuracy", "pruner": {"type": "none"},
        "search": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}, "model.layers[0].units": {"choice": [8, 16]}}})
    assert sweep.status_code == 201, sweep.text
    sweep_id = sweep.json()["id"]
    wait_until(lambda: stack.get(f"/api/v1/sweeps/{sweep_id}")["status"] != "running", 180, "the sweep's end")
    assert all(j["status"] == "succeeded" for j in (mlp_run, cnn_run, bayes)), stack.logs()
    wait_until(lambda: all(v["state"] == "ready" for v in stack.get("/api/v1/models/wide-model")["versions"]),
               120, "wide-model's versions ready")
    runs = ",".join(j["id"] for j in (mlp_run, cnn_run, bayes))
    for path in ("/", f"/jobs/{cnn_run['id']}", f"/jobs/{bayes['id']}", "/sweeps", f"/sweeps/{sweep_id}",
                 f"/compare?ids={runs}", "/models", "/models/wide-model", "/datasets", "/workers", "/submit",
                 "/projects", "/projects/default"):
        page.goto(stack.url + path)
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1400, f"{path} is {width} px wide"
    page.goto(stack.url + "/models/wide-model")
    diff = page.inner_text("#spec-diff")
    assert "→" in diff and "\\u2192" not in diff and "conv2d" in diff  # the layers in full, not JSON escapes
    snap(page, "models")


def test_runs_are_found_by_project_tag_and_search_and_the_search_stays_in_the_url(page, stack):
    made = {name: stack.submit(with_(mlp(hidden=(8,), epochs=2), name=f"org-{name}", project=project, tags=tags,
                                     **{"optimizer.lr": lr}))
            for name, project, tags, lr in (("a", "churn", {"team": "vision"}, 0.001),
                                            ("b", "churn", {"team": "nlp"}, 0.05),
                                            ("c", "other", {"team": "vision"}, 0.002))}
    for job_id in made.values():
        assert stack.wait(job_id)["status"] == "succeeded", stack.logs()
    page.goto(stack.url + "/")
    search = "params.optimizer.lr < 0.01 and tags.team = 'vision' and metrics.test_accuracy > 0"
    page.fill("#filter", search)
    page.select_option("#project", "churn")
    page.locator("form.filters button[type=submit]").click()
    page.wait_for_url(re.compile(r".*filter=.*"))
    assert page.locator("#runs tbody tr").count() == 1
    assert page.locator("#runs tbody tr").get_attribute("data-id") == made["a"]
    chip = page.locator(f"#runs tr[data-id='{made['a']}'] a.chip")
    assert chip.inner_text() == "team: vision"
    snap(page, "runs-search")
    shared = page.url  # a search is a link: opened afresh, it finds the same
    page.goto(shared)
    assert page.input_value("#filter") == search and page.locator("#runs tbody tr").count() == 1
    chip.click()  # a chip searches for its tag in every project
    page.wait_for_url(re.compile(r".*filter=tags\.team.*"))
    shown = {r.get_attribute("data-id") for r in page.locator("#runs tbody tr").all()}
    assert {made["a"], made["c"]} <= shown and made["b"] not in shown
    page.fill("#filter", "metrics.test_accuracy > 0.9 or tags.team = 'nlp'")
    page.locator("form.filters button[type=submit]").click()
    error = page.locator("#filter-error")
    error.wait_for()
    assert "position 28" in error.inner_text() and "OR is not supported" in error.inner_text()
    assert page.input_value("#filter").endswith("'nlp'") and page.locator("#runs tbody tr").count() == 0
    page.goto(stack.url + "/projects/churn")
    assert {r.get_attribute("data-id") for r in page.locator("#project-runs tbody tr").all()} == {made["a"], made["b"]}
    snap(page, "project")
    page.goto(stack.url + "/projects")
    assert "churn" in page.inner_text("#projects") and "other" in page.inner_text("#projects")


def test_a_run_is_tagged_and_noted_on_its_page_and_charts_its_system(page, stack):
    job_id = stack.submit(with_(mlp(hidden=(64,), epochs=8), name="noted"))
    assert stack.wait(job_id)["status"] == "succeeded", stack.logs()
    cpu = stack.get(f"/api/v1/jobs/{job_id}/metrics?names=sys/cpu_percent,sys/memory_mb")["series"]
    assert max(cpu["sys/cpu_percent"]["value"]) > 0 and min(cpu["sys/memory_mb"]["value"]) > 50, cpu
    assert "sys/cpu_percent" not in stack.job(job_id)["metrics"]  # not a model metric
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.fill("#tag-form input[name=key]", "stage")
    page.fill("#tag-form input[name=value]", "baseline")
    page.click("#tag-form button[type=submit]")
    page.locator("#tag-chips span.chip[data-key=stage]").wait_for()
    assert stack.job(job_id)["tags"] == {"stage": "baseline"}
    page.click("#note-edit")
    page.fill("#note-form textarea", "Why: **a baseline** for the lr study.\n\n<script>window.hacked = 1</script>")
    page.click("#note-form button[type=submit]")
    page.locator("#note-html strong").wait_for()
    assert page.inner_text("#note-html strong") == "a baseline"
    assert page.locator("#note-html script").count() == 0 and "<script>" in page.inner_text("#note-html")
    page.wait_for_selector("#system:not([hidden])")
    eventually(lambda: chart_points(page, "#chart-sys-cpu") >= 1)
    assert chart_points(page, "#chart-sys-memory") >= 1
    snap(page, "run-annotated")
    page.reload()  # both were stored, not only drawn
    assert page.inner_text("#note-html strong") == "a baseline"
    page.click("#tag-chips span.chip[data-key=stage] button.untag")
    eventually(lambda: page.locator("#tag-chips span.chip").count() == 0)
    assert stack.job(job_id)["tags"] == {}
