#!/usr/bin/env python
"""Convert Google's pretrained `speech_embedding` network into a WaveNet audio encoder folder (`WaveNetModel` with
`frontend="speech_embedding"` and its feature extractor) that `scripts/train.py --audio_model` copies in.

    python scripts/convert_speech_embedding.py --output_dir outputs/speech_embedding \
        [--audio_config '{"sampling_rate": 8000, "hidden_size": 64}'] [--onnx_file embedding_model.onnx] [--seed 42]

The weights come from the ONNX copy that the `openwakeword` package (version 0.5.1, Apache-2.0 code) ships in
`openwakeword/resources/models/embedding_model.onnx`; `bash scripts/setup_env.sh demo` installs it without its
dependencies, as only that file is read. The network is Google's `speech_embedding` (TF Hub, Apache-2.0; Lin et al.,
2020, arXiv:2002.01322), trained on a large amount of speech to make keyword spotters from few examples. Only the
front-end's convolution stack is pretrained: its layer norm, projection, the dilated stacks and the pooling start at
random, to be trained (`scripts/train.py --freeze_feature_encoder` keeps the pretrained stack as it is), drawn from
`--seed`: a conversion gives the same folder every time, so the runs that start from it repeat. The ONNX file's 20
convolutions are copied in graph order, each checked against the shape `WaveNetModel` expects.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from hf_multimodal import WaveNetConfig, WaveNetFeatureExtractor, WaveNetModel


def default_onnx_file() -> Path:
    """`embedding_model.onnx` inside the installed `openwakeword` package; a clear error when it is not there."""
    try:
        path = resources.files("openwakeword") / "resources" / "models" / "embedding_model.onnx"
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "openwakeword's embedding_model.onnx was not found: pip install --no-deps openwakeword==0.5.1 (later "
            "versions download their models at run time), or pass --onnx_file."
        )
    return Path(str(path))


def load_speech_embedding(model: WaveNetModel, onnx_file: str | Path) -> None:
    """Copy the convolutions of `onnx_file` (the `speech_embedding` network as openwakeword ships it) into the
    `feature_encoder` of `model`'s front-end, in graph order; ValueError when the graph does not fit."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    nodes = [node for node in graph.node if node.op_type == "Conv"]
    convs = [module for module in model.frontend.feature_encoder if isinstance(module, nn.Conv2d)]
    if len(nodes) != len(convs):
        raise ValueError(f"{onnx_file} holds {len(nodes)} convolutions where speech_embedding has {len(convs)}.")
    with torch.no_grad():
        for node, conv in zip(nodes, convs):
            weight = torch.from_numpy(initializers[node.input[1]].copy())
            if weight.shape != conv.weight.shape:
                raise ValueError(
                    f"{onnx_file}: convolution {node.name} has weights {tuple(weight.shape)} where speech_embedding "
                    f"expects {tuple(conv.weight.shape)}: is it openwakeword's embedding_model.onnx?"
                )
            conv.weight.copy_(weight)
            bias = initializers.get(node.input[2]) if len(node.input) > 2 else None
            conv.bias.copy_(torch.from_numpy(bias.copy()) if bias is not None else torch.zeros_like(conv.bias))


def convert(
    output_dir: str | Path, audio_config: dict | None = None, onnx_file: str | Path | None = None, seed: int = 42
) -> Path:
    """Build a `WaveNetModel` with the `speech_embedding` front-end (`audio_config` sets the rest; the layers that are
    not pretrained drawn from `seed`, the caller's random state left as it was), load the pretrained stack, save it
    with a `WaveNetFeatureExtractor` at its rate into `output_dir`; returns `output_dir`."""
    config = WaveNetConfig(**{**(audio_config or {}), "frontend": "speech_embedding"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WaveNetModel(config)
    load_speech_embedding(model, onnx_file if onnx_file is not None else default_onnx_file())
    model.save_pretrained(output_dir)
    WaveNetFeatureExtractor(sampling_rate=config.sampling_rate).save_pretrained(output_dir)
    return Path(output_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder to write the encoder and its feature extractor to.")
    parser.add_argument(
        "--audio_config", default="{}", help="WaveNetConfig settings as a JSON dict (sampling_rate, hidden_size, ...)."
    )
    parser.add_argument("--onnx_file", default=None, help="embedding_model.onnx (default: openwakeword's copy).")
    parser.add_argument(
        "--seed", type=int, default=42, help="Seed of the layers that start at random (projection, dilated stacks)."
    )
    args = parser.parse_args()
    audio_config = json.loads(args.audio_config)
    if not isinstance(audio_config, dict):
        parser.error(f"--audio_config must be a JSON dict, got {args.audio_config!r}.")
    print(f"wrote {convert(args.output_dir, audio_config, args.onnx_file, args.seed)}")


if __name__ == "__main__":
    main()
