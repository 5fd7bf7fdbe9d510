"""The playground page in a real browser: Playwright drives Debian's Chromium against the server's app.

Each test opens the page, types or uploads, submits, and reads what the page shows, comparing it with what
the Python API predicts for the same input. The API docs test runs a real `taskzoo serve` process; the others
serve the same app (taskzoo.serving.create_app) from a thread of this process, as taskzoo.serve does, which
spares each a process that spends seconds importing torch (tests/test_serve_process.py runs the command).
"""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra has it)")
if not shutil.which("chromium"):
    pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does): Playwright cannot download "
                "its own browser offline", allow_module_level=True)

from PIL import Image  # noqa: E402

import taskzoo  # noqa: E402
from taskzoo.data import load_image  # noqa: E402
from taskzoo.serving.process import ServerProcess as Server  # noqa: E402
from taskzoo.testing import toy_dataset  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        # The fake media flags give the page a microphone (a beeping test signal) without asking.
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, tiny_model_path, serve_in_thread):
    """open_page(task, **create_app options) -> (the page, loaded and showing its form; the task loaded again,
    apart from the one served)."""
    pages = []

    def open_(task, **options):
        url = serve_in_thread(taskzoo.load(task, model=tiny_model_path(task), device="cpu"), **options)
        page = browser.new_page()
        pages.append(page)
        page.goto(url + "/")
        page.wait_for_selector("#form:not([hidden]), #key-box:not([hidden])", timeout=30_000)
        return page, taskzoo.load(task, model=tiny_model_path(task), device="cpu")
    yield open_
    for page in pages:  # before the servers stop (serve_in_thread's teardown comes after this one)
        page.close()


def run(page) -> None:
    page.click("#run")
    page.wait_for_selector("#result > *", timeout=60_000)
    assert page.inner_text("#error") == ""


def shown_bars(page) -> list[tuple[str, float]]:
    rows = page.locator("#result .bars li")
    return [(rows.nth(i).locator(".name").inner_text().strip(), float(rows.nth(i).locator(".score").inner_text()))
            for i in range(rows.count())]


def upload_toy_image(page, task, tmp_path):
    image = load_image(toy_dataset(task, 1, seed=0)[0]["image"])
    image.save(tmp_path / "upload.png")
    page.set_input_files("#file", str(tmp_path / "upload.png"))
    return image


def test_api_docs_page_renders_the_predict_operation(browser, tiny_model_path):
    """The playground's "API docs" link opens Swagger UI, from the package's own files, showing the routes; the
    /predict operation unfolds to its request body with the task's example."""
    pytest.importorskip("swagger_ui_bundle", reason="swagger-ui-bundle (the serve extra) is not installed")
    with Server("image-classification", tiny_model_path("image-classification")) as server:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.click("text=API docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        assert "Unable to render" not in page.inner_text("body")
        assert page.locator(".opblock-summary-path").all_inner_texts() == ["/health", "/info", "/predict"]
        page.click("#operations-default-predict_predict_post .opblock-summary")
        operation = page.locator("#operations-default-predict_predict_post")
        operation.locator("text=Request body").wait_for(timeout=10_000)
        assert "predict one input or a list" in operation.inner_text()
        assert '"inputs": "<base64 image>"' in operation.locator(".body-param__example, .microlight").first.inner_text()
        page.close()


def test_text_classification_shows_labels_with_score_bars(open_page):
    page, zoo = open_page("text-classification", api_key="s3cret")
    # The server wants a key: the page asks for it before it shows the form.
    assert page.is_visible("#key-box") and page.is_hidden("#form")
    page.fill("#api-key", "s3cret")
    page.click("#key-save")
    page.wait_for_selector("#form:not([hidden])")
    assert page.inner_text("#task") == "text-classification"
    page.fill("#text", "a lovely film with superb acting")
    run(page)
    expected = zoo.predict("a lovely film with superb acting", top_k=len(zoo.labels))
    assert shown_bars(page) == [(item["label"], round(item["score"], 3)) for item in expected]
    widths = page.locator("#result .bar span").evaluate_all("spans => spans.map(s => parseFloat(s.style.width))")
    assert widths == pytest.approx([100 * item["score"] for item in expected], abs=0.01)


def test_object_detection_draws_boxes_on_the_image(open_page, tmp_path):
    page, zoo = open_page("object-detection")
    image = upload_toy_image(page, "object-detection", tmp_path)
    page.fill("#threshold", "0")  # the tiny model is untrained: show every box
    run(page)
    expected = zoo.predict(image, threshold=0.0)
    assert expected, "the tiny detector found no box at threshold 0"
    assert shown_bars(page) == [(item["label"], round(item["score"], 3)) for item in expected]
    # The boxes are drawn on a canvas over the image, in the first label colour (Okabe-Ito orange).
    size, outlined = page.evaluate("""() => {
        const canvas = document.getElementById("drawing");
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let count = 0;
        for (let i = 0; i < data.length; i += 4)
          if (data[i] === 230 && data[i + 1] === 159 && data[i + 2] === 0) count++;
        return [[canvas.width, canvas.height], count];
    }""")
    assert size[0] >= image.width and size[0] * image.height == size[1] * image.width
    assert outlined > 100


@pytest.mark.slow  # the segmentation route is tested in process (test_serve.py); this adds the drawing
def test_image_segmentation_overlays_masks_with_a_legend(open_page, tmp_path):
    page, zoo = open_page("image-segmentation")
    image = upload_toy_image(page, "image-segmentation", tmp_path)
    run(page)
    expected = zoo.predict(image)
    assert shown_bars(page) == [(item["label"], round(item["score"], 3)) for item in expected]
    assert page.locator("#result .swatch").count() == len(expected)
    assert page.locator("#drawing").count() == 1


def test_text_to_image_shows_the_generated_image(open_page):
    page, zoo = open_page("text-to-image")
    page.fill("#prompt", "a blue circle on a white background")
    page.fill("#seed", "7")
    page.fill("#steps", "2")
    run(page)
    source = page.get_attribute("#generated", "src")
    assert source.startswith("data:image/png;base64,")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))), dtype=np.int16)
    expected = zoo.predict("a blue circle on a white background", seed=7, num_inference_steps=2,
                           guidance_scale=7.5)["image"]
    assert shown.shape == (expected.height, expected.width, 3)
    assert np.abs(shown - np.asarray(expected, dtype=np.int16)).max() <= 2  # two loads, same seed
    assert page.evaluate("document.getElementById('generated').naturalWidth") == expected.width


def test_speech_recognition_transcribes_a_microphone_recording(open_page):
    import soundfile

    page, zoo = open_page("automatic-speech-recognition")
    page.click("#record")
    page.wait_for_function("document.getElementById('record').textContent.includes('Stop')")
    page.wait_for_timeout(1500)
    page.click("#record")
    page.wait_for_selector("#preview:not([hidden])")
    run(page)
    # The page recorded WAV itself; the same bytes, transcribed here, give the transcript it shows.
    recording = page.evaluate("""async () => {
        const bytes = new Uint8Array(await recorded.arrayBuffer());
        let text = "";
        for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
        return btoa(text);
    }""")
    waveform, rate = soundfile.read(io.BytesIO(base64.b64decode(recording)), dtype="float32")
    assert 1.0 < len(waveform) / rate < 10 and np.abs(waveform).max() > 0.01  # a second or more of signal
    assert page.text_content("#text-output") == zoo.predict((waveform, rate))["text"]
