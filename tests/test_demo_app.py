"""The demo web page (scripts/demo_app.py) end to end: the command serves a saved tiny model, and headless Chromium,
driven by Playwright, uses the page as a user does (typing, uploading files, clicking) and reads what it shows.

Playwright rather than Selenium: it drives Debian's Chromium directly (`executable_path`, no driver binary whose
version must match the browser's), uploads into Gradio's hidden file inputs, and waits for page conditions
(`wait_for_function`) without sleeps. No browser is downloaded: `.ci/run` installs Debian's `chromium`.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile
from conftest import SCRIPTS, WITHOUT_THE_PACKAGE, random_audio, random_image, tiny_model
from transformers import pipeline

demo_app = pytest.importorskip("demo_app", reason="gradio is not installed: pip install -e '.[app]'")
CHROMIUM = Path(demo_app.CHROMIUM)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
gradio_client = pytest.importorskip("gradio_client", reason="gradio is not installed: pip install -e '.[app]'")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
]

LABELS = {0: "bird", 1: "cat", 2: "dog"}
TEXT = "a loud red bird"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, processor):
    folder = tmp_path_factory.mktemp("demo_app") / "model"
    tiny_model(fusion_type="gated", id2label=LABELS).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A PNG, a 16 kHz WAV, a text file named as an image and a WAV with a header but no valid audio."""
    folder = tmp_path_factory.mktemp("demo_app_inputs")
    random_image(0).save(folder / "digit.png")
    soundfile.write(folder / "spoken.wav", random_audio(1, 0.4), 16000, subtype="FLOAT")
    (folder / "notes.txt").write_text("these are notes, not an image\n")
    (folder / "notes.png").write_text("these are notes, not an image\n")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    return {path.name: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def server(model_folder):
    """`python scripts/demo_app.py <folder> --port N` in a subprocess, until it answers."""
    port = demo_app.free_port()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "demo_app.py"), str(model_folder), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the demo app did not start:\n{process.communicate()[0]}")
            time.sleep(0.5)
    yield process, url
    process.terminate()
    process.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium whose microphone is Chromium's fake device (a beep), allowed without asking."""
    fake_microphone = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=fake_microphone)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh tab on the demo page."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, permissions=["microphone"])
    yield demo_app.DemoPage(context.new_page(), server[1])
    context.close()


@pytest.fixture(scope="module")
def reference(model_folder):
    """The package's pipeline on the same folder: what the page must show."""
    return pipeline("multimodal-classification", model=str(model_folder))


def chart_labels(page) -> list[str]:
    """The modalities of the importance bar chart's bars, once drawn."""
    selector = "#importance .importance-bar"
    page.page.wait_for_selector(selector)
    return page.page.eval_on_selector_all(selector, "bars => bars.map(bar => bar.dataset.modality)")


def test_page_loads(page, model_folder):
    assert page.page.title() == "hf_multimodal demo"
    header = page.page.inner_text("h1")
    assert header == "Multimodal classification"
    assert "bird, cat, dog" in page.page.inner_text("body") and model_folder.name in page.page.inner_text("body")
    # Gradio draws each component once its script has loaded (the audio input's comes last): wait until shown.
    for element in ("#text-input textarea", "#image-input", "#audio-input", "#classify-button"):
        sync_api.expect(page.page.locator(element)).to_be_visible(timeout=30_000)


SUBSETS = [subset for size in (1, 2, 3) for subset in itertools.combinations(("text", "image", "audio"), size)]


@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_prediction_equals_the_pipeline(page, files, reference, subset):
    example = {"text": TEXT, "image": str(files["digit.png"]), "audio": str(files["spoken.wav"])}
    example = {modality: value for modality, value in example.items() if modality in subset}
    page.fill(**example)
    page.classify()
    expected = reference(example, return_modality_importance=True)
    shown = page.wait_for_prediction()
    assert shown == expected["labels"][0]
    others = [modality for modality in ("text", "image", "audio") if modality not in subset]
    expected_bars = [modality for modality in subset if len(subset) > 1]
    expected_bars += [f"{subset[0]} (only input)"] * (len(subset) == 1) + [f"{m} (not given)" for m in others]
    assert sorted(chart_labels(page)) == sorted(expected_bars)


def test_a_microphone_recording_is_classified(page, reference):
    audio = page.page.locator("#audio-input")
    audio.get_by_role("button", name="Record audio").click()
    audio.locator("button", has_text="Record").first.click()
    page.page.wait_for_timeout(1500)
    audio.locator("button", has_text="Stop").first.click()
    recording = audio.locator("[data-testid=download-link]")
    recording.wait_for()
    path = recording.get_attribute("href").split("/gradio_api/file=", 1)[1]  # the browser's WAV, as the server holds it
    assert Path(path).name == "audio.wav" and soundfile.info(path).duration > 0.5
    page.fill(text=TEXT)
    page.classify()
    assert page.wait_for_prediction() == reference({"text": TEXT, "audio": path})[0]


def shown_error(page) -> str | None:
    """The text of the page's error box, or None while it is empty."""
    box = page.page.locator("#error .error-message")
    return box.inner_text().strip() if box.count() else None


def test_bad_uploads_show_readable_errors_and_the_server_keeps_serving(page, browser, server, files, reference):
    page.classify()
    message = page.wait_for_error("Nothing to classify")
    assert message.startswith("Nothing to classify: type a text, upload an image") and shown_error(page) == message

    # a .txt file: the page's own file-type check refuses it before any upload (in a toast)
    page.page.locator("#image-input input[type=file]").set_input_files(str(files["notes.txt"]))
    assert page.wait_for_error("notes.txt") == "Invalid file type: notes.txt. Only image/* allowed."

    # a text file named .png reaches the server; the pipeline's message is shown, without the server's folders
    page.fill(text=TEXT, image=files["notes.png"])
    page.classify()
    message = page.wait_for_error("notes.png")
    assert message.startswith("could not decode image 'notes.png'") and "Pass a valid image file" in message
    assert shown_error(page) == message and page.page.locator("#scores meter").count() == 0
    assert "/tmp" not in message and "Traceback" not in page.page.inner_text("body")

    retry = demo_app.DemoPage(browser.new_page(), server[1])
    retry.fill(audio=files["corrupt.wav"])
    retry.classify()
    message = retry.wait_for_error("corrupt.wav")
    assert message.startswith("could not decode audio 'corrupt.wav'") and "valid WAV / FLAC / OGG" in message

    # the server keeps serving, and the first page, given a valid image, shows the prediction and clears its error
    assert server[0].poll() is None
    page.fill(image=files["digit.png"], audio=files["spoken.wav"])
    page.classify()
    example = {"text": TEXT, "image": str(files["digit.png"]), "audio": str(files["spoken.wav"])}
    assert page.wait_for_prediction() == reference(example)[0] and shown_error(page) is None


def test_the_api_endpoint_answers_gradio_client(server, files, reference):
    client = gradio_client.Client(server[1], verbose=False)
    image, audio = (gradio_client.handle_file(str(files[name])) for name in ("digit.png", "spoken.wav"))
    scores, chart, error = client.predict(TEXT, image, audio, api_name=f"/{demo_app.API_NAME}")
    expected = reference({"text": TEXT, "image": str(files["digit.png"]), "audio": str(files["spoken.wav"])})[0]
    assert scores["label"] == expected["label"] and scores["confidences"][0]["confidence"] == expected["score"]
    assert 'class="importance-chart"' in chart and error == ""
    scores, chart, error = client.predict(TEXT, gradio_client.handle_file(str(files["notes.png"])), None,
                                          api_name=f"/{demo_app.API_NAME}")
    assert "could not decode image &#x27;notes.png&#x27;" in error and chart == "" and not scores


def test_measure_times_the_page_against_the_pipeline(browser, reference, files, capsys):
    result = demo_app.measure(reference, TEXT, str(files["digit.png"]), str(files["spoken.wav"]), 3, browser)
    assert set(result) == {"pipeline_s", "page_s", "ratio", "repeats"} and result["repeats"] == 3
    assert result["pipeline_s"] > 0 and result["page_s"] > 0
    assert result["ratio"] == pytest.approx(result["page_s"] / result["pipeline_s"])
    with capsys.disabled():
        print(f"\ndemo page, tiny model, 3 modalities: pipeline {result['pipeline_s'] * 1000:.1f} ms, page "
              f"{result['page_s'] * 1000:.1f} ms, ratio {result['ratio']:.2f}")


SPACE_CHECK = """
import json, runpy, sys

app = runpy.run_path(sys.argv[1], run_name="space_app")  # as a module: the page is built, not launched
assert app["hf_multimodal"] is None
classifier = app["load_classifier"](sys.argv[2])
scores, importance = app["classify"](classifier, *sys.argv[3:6])
print(json.dumps({"default": app["DEFAULT_MODEL"], "module": type(classifier).__module__, "scores": scores,
                  "importance": importance.to_dict("records")}))
"""


def test_a_written_space_serves_the_model_through_its_remote_code(files, reference, tmp_path):
    """`--write_space` writes app.py, requirements.txt and the Space card; app.py runs in a process that cannot
    import hf_multimodal (as on a Space) and classifies as the package's pipeline does."""
    space = demo_app.write_space("alice/av-digits", tmp_path / "space")
    assert sorted(path.name for path in space.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    card = (space / "README.md").read_text()
    assert "sdk: gradio" in card and "app_file: app.py" in card and "- alice/av-digits" in card
    assert "transformers==" in (space / "requirements.txt").read_text()
    repo = tmp_path / "repo"  # as scripts/push_to_hub.py leaves a repo: the pipeline's code and task in it too
    reference.save_pretrained(repo)
    example = [TEXT, str(files["digit.png"]), str(files["spoken.wav"])]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_PACKAGE + SPACE_CHECK, str(space / "app.py"), str(repo), *example],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.splitlines()[-1])
    assert served["default"] == "alice/av-digits" and served["module"].startswith("transformers_modules")
    expected = reference(dict(zip(("text", "image", "audio"), example)), return_modality_importance=True, top_k=5)
    assert served["scores"] == pytest.approx({entry["label"]: entry["score"] for entry in expected["labels"]})
    importance = {row["modality"]: row["importance"] for row in served["importance"]}
    assert importance == pytest.approx(expected["modality_importance"])


def test_a_space_needs_a_hub_repo_id_and_an_empty_folder(model_folder, tmp_path):
    with pytest.raises(ValueError, match="push the folder first"):
        demo_app.write_space(str(model_folder), tmp_path / "space")
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "app.py").write_text("mine\n")
    with pytest.raises(FileExistsError, match="already holds app.py"):
        demo_app.write_space("alice/av-digits", tmp_path / "space")
    assert (tmp_path / "space" / "app.py").read_text() == "mine\n"
