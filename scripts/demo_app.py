#!/usr/bin/env python
"""A demo web page for a trained hf_multimodal classifier: record or upload audio, upload an image, type a text (any
of them may be left empty) and see the top labels with their scores and how much each modality drove the prediction.

    python scripts/demo_app.py outputs/demo/model [--port 7860] [--host 127.0.0.1] [--share off] [--top-k 5]
    python scripts/demo_app.py user/av-digits                  # a Hub repo id works as well as a saved folder
    python scripts/demo_app.py outputs/demo/model --measure "seven" digit.png seven.wav [--repeats 20]
    python scripts/demo_app.py user/av-digits --write_space space/   # a Hugging Face Space serving a pushed model

Why Gradio: it is what Hub users already know (a Hugging Face Space runs a Gradio app as it is), and it has the parts
this page needs built in: microphone recording and audio / image upload, `gr.Label` for scores, HTML outputs for
the importance chart and error messages; and every app has an HTTP API (`gradio_client`, endpoint `/classify`) for
free.

Every prediction comes from `pipeline("multimodal-classification", model=..., return_modality_importance=True)`:
the page hands the pipeline the uploaded files' paths undecoded (`preprocess=False`: Gradio still checks that each
path is one of its own uploads, but neither opens the files nor hops to a thread per input), so a file that is not an
image or a corrupt WAV is refused with the package's own message, shown on the page in an error box under the scores
(with the server's temporary folder left out) while the server keeps serving. The importance chart is HTML drawn on
the server, the event skips Gradio's queue and shows no progress animation, and the page keeps no run history:
Gradio's spinner over the outputs, its Vega `gr.BarPlot`, its run history and the queue's event stream cost about
100 ms per answer in Chromium, twice the demo model's call (measured; see README.md, "Demo web page"). Without the
queue, Gradio 6's page shows a raised `gr.Error` as a bare "Error", hence the error box.
`--measure` starts the page on a free local port, opens it in headless Chromium (Playwright; the `test` extra and
Debian's `chromium`), uploads the image and audio, clicks Classify `--repeats` times and prints the median time
until the page shows the answer against the pipeline's own time on the same files.

`--write_space FOLDER` writes a Space for a model pushed to the Hub (`scripts/push_to_hub.py`): `app.py` (this file,
serving that repo when started without arguments), `requirements.txt` and the Space card `README.md`. The Space does
not need hf_multimodal installed: without the package the page loads the model and its pipeline through the repo's
own code (`trust_remote_code=True`). Upload it with `hf upload <user>/<space> space/ --repo-type space`.
"""

from __future__ import annotations

import argparse
import html
import importlib.metadata
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

import gradio as gr
import pandas as pd
from transformers import Pipeline, pipeline

try:
    import hf_multimodal  # registers the task with transformers
except ImportError:  # a Space without the package: the model repo's own code serves the task
    hf_multimodal = None

API_NAME = "classify"
DEFAULT_MODEL: str | None = None
"""The model served when no model is given (set in the `app.py` that `--write_space` writes)."""
SPACE_FILES = ("app.py", "requirements.txt", "README.md")
SPACE_REQUIREMENTS = ("torch", "transformers", "soundfile", "pillow", "scipy")
"""What a Space needs beside Gradio (which the Space SDK installs) to run the model's remote code, pinned to the
versions installed here."""
PAGE_CSS = "#error:not(:has(.error-message)) { display: none; }"
"""The page's style: the error box takes no room while it is empty."""
CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install chromium), driven by Playwright in --measure


def load_classifier(model: str) -> Pipeline:
    """The `multimodal-classification` pipeline of a saved folder (e.g. scripts/train.py's output) or a Hub repo id.

    Example:

    ```python
    >>> classifier = load_classifier("outputs/demo/model")
    >>> classifier({"text": "seven"}, return_modality_importance=True)["labels"][0]["label"]
    'seven'
    ```
    """
    return pipeline("multimodal-classification", model=model, trust_remote_code=hf_multimodal is None)


def classify(
    classifier: Pipeline, text: str | None, image: str | None, audio: str | None, top_k: int = 5
) -> tuple[dict[str, float], pd.DataFrame]:
    """Classify one example of the page: the text and the paths of the uploaded image and audio, each possibly empty.

    Returns the `gr.Label` value (`{label: score}`, the `top_k` best) and the bar chart's rows (`modality`,
    `importance`: the drop of the top label's score without that modality; 0 for a modality that is absent or the
    example's only one, which the row's name says). An empty or malformed input raises `gr.Error` with a message for
    the user (the pipeline's, for a file it cannot decode), which the page shows in its error box.

    Example:

    ```python
    >>> scores, importance = classify(classifier, "seven", "digit.png", None)
    >>> max(scores, key=scores.get), importance["modality"].tolist()
    ('seven', ['text', 'image', 'audio (not given)'])
    ```
    """
    example = {"text": text or None, "image": image, "audio": audio}
    example = {modality: value for modality, value in example.items() if value is not None}
    if not example:
        raise gr.Error("Nothing to classify: type a text, upload an image or record / upload an audio clip.")
    try:
        prediction = classifier(example, top_k=top_k, return_modality_importance=True)
    except (ValueError, TypeError) as error:
        raise gr.Error(_without_folders(str(error), [image, audio])) from error
    scores = {entry["label"]: entry["score"] for entry in prediction["labels"]}
    rows = []
    for modality, value in prediction["modality_importance"].items():
        name = modality if value is not None else f"{modality} ({'only input' if modality in example else 'not given'})"
        rows.append({"modality": name, "importance": 0.0 if value is None else value})
    return scores, pd.DataFrame(rows, columns=["modality", "importance"])


def importance_chart(importance: pd.DataFrame) -> str:
    """The page's bar chart of `classify`'s importance rows, as HTML: one bar per modality, its length the drop of the
    top label's score without that modality (orange; blue for a negative drop, i.e. the score rises without it), its
    value written beside it. Drawn on the server, so that the browser only inserts it (Gradio's Vega `gr.BarPlot`
    embeds a whole new chart per answer).

    Example:

    ```python
    >>> importance_chart(pd.DataFrame({"modality": ["text", "audio"], "importance": [0.02, 0.3]}))[:36]
    '<div class="importance-chart" role="'
    ```
    """
    bars = []
    for modality, value in zip(importance["modality"], importance["importance"]):
        name = html.escape(str(modality))
        color = "#f97316" if value >= 0 else "#3b82f6"
        bars.append(
            f'<div class="importance-bar" data-modality="{name}" style="display:flex;align-items:center;gap:8px;'
            f'margin:4px 0"><span style="width:9em">{name}</span><span style="flex:1;background:#e5e7eb;height:14px">'
            f'<span style="display:block;height:100%;width:{min(abs(value), 1.0) * 100:.1f}%;background:{color}">'
            f'</span></span><span style="width:4em;text-align:right">{value:+.2f}</span></div>'
        )
    return f'<div class="importance-chart" role="figure" aria-label="modality importance">{"".join(bars)}</div>'


def error_box(message: str) -> str:
    """The page's error box showing `message` (escaped), as HTML.

    Example:

    ```python
    >>> error_box("could not decode image 'notes.png'")[:46]
    '<div class="error-message" role="alert" style='
    ```
    """
    return (
        '<div class="error-message" role="alert" style="padding:8px 12px;border:1px solid #fca5a5;border-radius:6px;'
        f'background:#fef2f2;color:#991b1b">{html.escape(message)}</div>'
    )


def _without_folders(message: str, paths: list[str | None]) -> str:
    """The message with each uploaded file's path reduced to its name: the server's folders are not the user's."""
    for path in paths:
        if path:
            message = message.replace(path, Path(path).name)
    return message


def build_app(classifier: Pipeline, top_k: int = 5) -> gr.Blocks:
    """The page: text, image and audio inputs of the modalities the model reads, a Classify button, the top labels
    (`gr.Label`), an error box (`error_box`, in `gr.HTML`; empty after a prediction) and the per-modality importance
    (`importance_chart`, in `gr.HTML`). The Classify event skips Gradio's queue (a plain HTTP request from the page).
    Its API endpoint is `/classify`: the text and the uploaded files (`gradio_client.handle_file`) in; the labels, the
    chart's HTML and the error box's HTML (empty unless the input was refused; then the labels and chart are empty)
    out.

    Example:

    ```python
    >>> build_app(load_classifier("outputs/demo/model")).launch()
    ```
    """
    config = classifier.model.config
    modalities = config.modalities
    labels = ", ".join(str(label) for label in (config.id2label or {}).values())
    with gr.Blocks(title="hf_multimodal demo") as app:
        gr.Markdown(
            f"# Multimodal classification\nModel: `{Path(str(config.name_or_path)).name or config.name_or_path}` "
            f"({config.fusion_type} fusion of {', '.join(modalities)}). Labels: {labels}.\n\n"
            "Give any of the inputs; leave the others empty."
        )
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Text", lines=2, visible="text" in modalities, elem_id="text-input")
                image = gr.Image(
                    label="Image", type="filepath", sources=["upload", "clipboard"], visible="image" in modalities,
                    elem_id="image-input",
                )
                audio = gr.Audio(
                    label="Audio", type="filepath", sources=["upload", "microphone"], visible="audio" in modalities,
                    elem_id="audio-input",
                )
                button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            with gr.Column():
                scores = gr.Label(label="Top labels", num_top_classes=top_k, elem_id="scores")
                error = gr.HTML(elem_id="error")
                gr.Markdown("**Modality importance** (drop of the top score without it)")
                importance = gr.HTML(elem_id="importance")

        def on_classify(
            text: str | None, image: dict | None, audio: dict | None
        ) -> tuple[dict[str, float] | None, str, str]:
            # preprocess=False: the files arrive as Gradio's upload records, already checked to be its own uploads
            paths = [None if upload is None else upload["path"] for upload in (image, audio)]
            try:
                scores, rows = classify(classifier, text, *paths, top_k=top_k)
            except gr.Error as refused:  # shown in the error box: without the queue, the page would only say "Error"
                return None, "", error_box(refused.message)
            return scores, importance_chart(rows), ""

        # show_progress_on=[]: no loading status on the outputs (the page snapshots a component's props per update)
        button.click(
            on_classify, inputs=[text, image, audio], outputs=[scores, importance, error], api_name=API_NAME,
            preprocess=False, show_progress="hidden", show_progress_on=[], queue=False,
        )
    return app


def write_space(repo_id: str, folder: str | os.PathLike) -> Path:
    """Write a Hugging Face Space (Gradio SDK) that serves the pushed model `repo_id` with this page: `app.py` (this
    file with `DEFAULT_MODEL = repo_id`), `requirements.txt` (the versions this page was tested with) and the Space
    card `README.md`. Refuses a local folder (a Space can only load from the Hub) and files already in `folder`.

    Example:

    ```python
    >>> sorted(path.name for path in write_space("me/av-digits", "space").iterdir())
    ['README.md', 'app.py', 'requirements.txt']
    ```
    """
    if Path(repo_id).exists() or repo_id.count("/") != 1:
        raise ValueError(
            f"a Space loads its model from the Hub, so it needs a repo id as namespace/name, got {repo_id!r}: push "
            "the folder first (python scripts/push_to_hub.py FOLDER namespace/name) and pass that repo id."
        )
    folder = Path(folder)
    existing = [name for name in SPACE_FILES if (folder / name).exists()]
    if existing:
        raise FileExistsError(f"{folder} already holds {', '.join(existing)}: choose an empty folder, or remove them.")
    source = Path(__file__).read_text()
    default_line = "DEFAULT_MODEL: str | None = None\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(source.replace(default_line, f"DEFAULT_MODEL: str | None = {repo_id!r}\n", 1))
    (folder / "requirements.txt").write_text(
        "".join(f"{name}=={importlib.metadata.version(name).split('+')[0]}\n" for name in SPACE_REQUIREMENTS)
    )
    (folder / "README.md").write_text(
        f"---\ntitle: {repo_id.split('/')[1]}\nsdk: gradio\nsdk_version: {gr.__version__}\napp_file: app.py\n"
        f"models:\n- {repo_id}\n---\n\nA demo page of [{repo_id}](https://huggingface.co/{repo_id}), a multimodal "
        "classifier made with hf_multimodal: give a text, an image and / or an audio clip and see the top labels and "
        "how much each input drove the prediction.\n"
    )
    return folder


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True) -> str:
    """Serve the page (with `PAGE_CSS`, without server-side rendering, which needs Node, and without Gradio's run
    history, which stores every request's inputs and outputs in the browser: 20-40 ms per answer here) and return its
    local URL; `block=False` returns at once, leaving the server in a background thread (`app.close()` stops it)."""
    app.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block, ssr_mode=False, quiet=not block,
        run_history=False, css=PAGE_CSS,
    )
    return app.local_url


class DemoPage:
    """The demo page in a Playwright page (headless Chromium in the tests and `--measure`): fill the inputs as a user
    does (typing, uploading files), click Classify, read the prediction shown or the error message.

    Example:

    ```python
    >>> from playwright.sync_api import sync_playwright
    >>> with sync_playwright() as playwright:
    ...     browser = playwright.chromium.launch(executable_path=CHROMIUM)
    ...     page = DemoPage(browser.new_page(), "http://127.0.0.1:7860/")
    ...     page.fill(text="seven", image="digit.png")
    ...     page.classify()
    ...     page.wait_for_prediction()
    {'label': 'seven', 'score': 0.93}
    ```
    """

    _SHOWN = """(label, score) => {
        const heading = document.querySelector("#scores [data-testid=label-output-value]");
        const bar = document.querySelector("#scores meter");
        return heading !== null && bar !== null && (label === null || heading.textContent.trim() === label)
            && (score === null || bar.value === score);
    }"""
    """In-page test that the page shows a prediction (with `label` and `score` unless they are null)."""

    def __init__(self, page: Any, url: str, timeout_s: float = 60.0):
        self.page = page
        self.page.set_default_timeout(timeout_s * 1000)
        self.page.goto(url)
        self.page.wait_for_selector("#classify-button")

    def fill(self, text: str | None = None, image: str | os.PathLike | None = None,
             audio: str | os.PathLike | None = None) -> None:
        """Type the text and upload the files that are given, waiting until each upload is shown."""
        if text is not None:
            self.page.locator("#text-input textarea").fill(text)
        for modality, path, shown in (("image", image, "img"), ("audio", audio, "[data-testid=download-link]")):
            if path is not None:
                with self.page.expect_response(lambda response: "/gradio_api/upload?" in response.url):
                    self.page.locator(f"#{modality}-input input[type=file]").set_input_files(str(path))
                self.page.wait_for_selector(f"#{modality}-input {shown}")

    def classify(self) -> None:
        self.page.click("#classify-button")

    def wait_for_prediction(self, label: str | None = None, score: float | None = None) -> dict[str, Any]:
        """The top label and its score as the page shows them (the `gr.Label` heading and its first bar's value),
        once shown; with `label` and `score`, once the page shows exactly those."""
        self.page.wait_for_function(f"([label, score]) => ({self._SHOWN})(label, score)", arg=[label, score],
                                    polling="raf")
        return {
            "label": self.page.inner_text("#scores [data-testid=label-output-value]").strip(),
            "score": self.page.eval_on_selector("#scores meter", "bar => bar.value"),
        }

    def timed_classify(self, label: str, score: float) -> float:
        """Seconds from the click on Classify to the page showing `label` with `score` on top, timed in the page
        (checked at each frame), so that the browser automation's own round trips are left out."""
        return self.page.evaluate(
            f"""async ([label, score]) => {{
                const shown = {self._SHOWN};
                const began = performance.now();
                document.querySelector("#classify-button").click();
                while (!shown(label, score)) await new Promise(resolve => requestAnimationFrame(resolve));
                return (performance.now() - began) / 1000;
            }}""",
            [label, score],
        )

    def wait_for_error(self, containing: str) -> str:
        """The whole text of the error message shown on the page that contains `containing`, once shown: in the page's
        error box (a refused request) or in a Gradio toast (a file the upload refuses by its type)."""
        message = self.page.locator("#error .error-message, [data-testid=toast-text]", has_text=containing).first
        message.wait_for()
        return message.inner_text().strip()


def measure(classifier: Pipeline, text: str, image: str, audio: str, repeats: int = 20, browser: Any = None
            ) -> dict[str, float]:
    """Median seconds from a click on Classify to the page showing the prediction of a 3-modality example (files
    uploaded beforehand, as a user picks them), in headless Chromium, against the pipeline's own call on the same
    files; and their ratio. Two texts alternate (`text` and `text + "!"`), so that each answer differs from the one
    shown before it: the page's time (`DemoPage.timed_classify`) ends when it shows the pipeline's exact top label
    and score. `browser`: a
    Playwright browser to use (by default, Chromium at `CHROMIUM`, started here).

    Example:

    ```python
    >>> measure(classifier, "seven", "digit.png", "seven.wav")
    {'pipeline_s': 0.047, 'page_s': 0.08, 'ratio': 1.7, 'repeats': 20}
    ```
    """
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM)
            return measure(classifier, text, image, audio, repeats, chromium)
    examples = [{"text": variant, "image": image, "audio": audio} for variant in (text, text + "!")]
    expected = [classifier(example, return_modality_importance=True)["labels"][0] for example in examples]
    if expected[0] == expected[1]:
        raise ValueError(f"{text!r} and {text + '!'!r} get the same top score: give another text to --measure.")
    timings = {"pipeline_s": [], "page_s": []}
    app = build_app(classifier)
    url = launch(app, port=free_port(), block=False)
    tab = browser.new_page()
    try:
        page = DemoPage(tab, url)
        page.fill(image=image, audio=audio)
        for index in range(2 * repeats + 2):  # the first two of each are a warm-up
            example, answer = examples[index % 2], expected[index % 2]
            page.fill(text=example["text"])
            page_seconds = page.timed_classify(answer["label"], answer["score"])
            began = time.perf_counter()
            classifier(example, return_modality_importance=True)
            if index >= 2:  # alternate the two, so that a slow spell of a shared machine hits both
                timings["pipeline_s"].append(time.perf_counter() - began)
                timings["page_s"].append(page_seconds)
    finally:
        tab.close()
        app.close()
    result = {name: statistics.median(values) for name, values in timings.items()}
    return {**result, "ratio": result["page_s"] / result["pipeline_s"], "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?" if DEFAULT_MODEL else None, default=DEFAULT_MODEL,
                        help="a saved model folder (e.g. outputs/demo/model) or a Hub repo id")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0: the whole network; a Space sets GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--share", choices=["on", "off"], default="off", help="a public gradio.live link (needs internet)")
    parser.add_argument("--top-k", type=int, default=5, help="labels shown")
    parser.add_argument("--measure", nargs=3, metavar=("TEXT", "IMAGE", "AUDIO"),
                        help="time the page against the pipeline on this example instead of serving")
    parser.add_argument("--repeats", type=int, default=20, help="requests timed by --measure")
    parser.add_argument("--write_space", metavar="FOLDER",
                        help="write a Hugging Face Space serving MODEL (a pushed repo id) into FOLDER and exit")
    args = parser.parse_args()
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}.")
    if args.write_space:
        try:
            folder = write_space(args.model, args.write_space)
        except (ValueError, FileExistsError) as error:
            parser.error(str(error))
        print(f"wrote a Space for {args.model} in {folder}: upload it with "
              f"hf upload <namespace>/<space> {folder} --repo-type space")
        return
    try:
        classifier = load_classifier(args.model)
    except (OSError, ValueError) as error:
        parser.error(f"could not load a multimodal classifier from {args.model!r}: {error}")
    if args.measure:
        result = measure(classifier, *args.measure, repeats=args.repeats)
        print(
            f"3-modality request, median of {result['repeats']}: pipeline {result['pipeline_s'] * 1000:.1f} ms, "
            f"web page {result['page_s'] * 1000:.1f} ms, ratio {result['ratio']:.2f} (target < 2)"
        )
        return
    launch(build_app(classifier, top_k=args.top_k), host=args.host, port=args.port, share=args.share == "on")


if __name__ == "__main__":
    main()
