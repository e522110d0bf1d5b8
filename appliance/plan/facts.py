"""What sizing needs to know about a model, from its own metadata.

GGUF: the tensor table (each tensor's type and bytes, so the weights of each layer), the
block count, embedding length, head counts (a number, or one per layer), key and value
lengths, vocabulary, trained context, and which layers attend through a sliding window: the
GGUF's ``attention.sliding_window_pattern`` where it states one (a list of flags, or a
period), else the period llama.cpp uses for that architecture. ONNX: the initializers' bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ModelError
from appliance.plan.gguf_header import ArrayLength, GgufFile, TensorInfo, read_gguf

# llama.cpp's default sliding-window period per architecture, used when the GGUF states a
# window but no pattern (src/models/*.cpp, load_swa_pattern): in each period the last layer
# attends globally, the others through the window.
SWA_PERIODS = {"gemma3": 6, "gemma2": 2, "cohere2": 4}
GEMMA2_DEFAULT_WINDOW = 4096  # tokens: llama.cpp's value when a gemma2 GGUF states none


@dataclass(frozen=True)
class ModelFacts:
    path: Path
    format: str  # "gguf" or "onnx"
    architecture: str
    name: str
    weights_bytes: int  # bytes of every tensor (GGUF) or initializer (ONNX)
    n_params: int
    n_layer: int = 0
    n_embd: int = 0
    n_ff: int = 0
    n_vocab: int = 0
    context_train: int = 0  # tokens
    n_head: tuple[int, ...] = ()  # per layer
    n_head_kv: tuple[int, ...] = ()  # per layer
    head_dim_k: int = 0
    head_dim_v: int = 0
    sliding_window: int = 0  # tokens; 0 = none
    swa_layers: frozenset[int] = frozenset()
    swa_pattern_known: bool = True  # False: a window is stated but not which layers use it
    layer_bytes: tuple[int, ...] = ()  # weights of blk.N, per layer
    embedding_bytes: int = 0  # token_embd (stays in host memory under llama.cpp's offload)
    output_bytes: int = 0  # the output matrix (token_embd again when tied)
    file_type: str = ""  # e.g. Q4_K_M, from general.file_type
    tensor_types: dict[str, int] = field(default_factory=dict)  # type -> parameters

    def kv_width(self, layer: int) -> tuple[int, int]:
        """K and V values per token in `layer` (head_dim x KV heads)."""
        heads = self.n_head_kv[layer]
        return self.head_dim_k * heads, self.head_dim_v * heads


# llama.cpp's LLAMA_FTYPE values (include/llama.h) for the common ones, for display
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


def facts_of(path: Path) -> ModelFacts:
    """The facts of the model file `path` (GGUF or ONNX). ModelError if it cannot be read."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from e
    if magic == b"GGUF":
        try:
            return gguf_facts(read_gguf(path))
        except (ValueError, OverflowError, KeyError) as e:
            raise ModelError(f"{path.name} is not a readable GGUF: {e}") from e
    if path.suffix == ".onnx":
        return onnx_facts(path)
    raise ModelError(f"{path.name} is neither a GGUF nor an ONNX model file")


def _int(meta: dict[str, object], key: str, default: int = 0) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} is {value!r}, not a whole number")
    return value


def _per_layer(meta: dict[str, object], key: str, n_layer: int, default: int) -> tuple[int, ...]:
    value = meta.get(key, default)
    if isinstance(value, list):
        if len(value) != n_layer:
            raise ValueError(f"{key} lists {len(value)} values for {n_layer} layers")
        return tuple(int(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} is {value!r}")
    return (value,) * n_layer


def _swa(meta: dict[str, object], arch: str, n_layer: int) -> tuple[int, frozenset[int], bool]:
    window = _int(meta, f"{arch}.attention.sliding_window")
    if arch == "gemma2" and not window:
        window = GEMMA2_DEFAULT_WINDOW
    if not window:
        return 0, frozenset(), True
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return window, frozenset(i for i, flag in enumerate(pattern[:n_layer]) if flag), True
    period = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) else None
    period = period if period is not None else SWA_PERIODS.get(arch)
    if period is None:
        return window, frozenset(), False  # counted as global layers: the larger cache
    if period == 0:
        return window, frozenset(range(n_layer)), True
    return window, frozenset(i for i in range(n_layer) if i % period < period - 1), True


def _layer_of(tensor: TensorInfo) -> int | None:
    parts = tensor.name.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        return int(parts[1])
    return None


def gguf_facts(gguf: GgufFile) -> ModelFacts:
    meta: dict[str, object] = dict(gguf.metadata)
    arch = str(meta.get("general.architecture", ""))
    if not arch:
        raise ValueError("general.architecture is missing")
    n_layer = _int(meta, f"{arch}.block_count")
    n_embd = _int(meta, f"{arch}.embedding_length")
    n_head = _per_layer(meta, f"{arch}.attention.head_count", n_layer, 0)
    n_head_kv = _per_layer(meta, f"{arch}.attention.head_count_kv", n_layer, max(n_head, default=0))
    first_heads = next((h for h in n_head if h), 1)
    head_dim_k = _int(meta, f"{arch}.attention.key_length", n_embd // first_heads)
    head_dim_v = _int(meta, f"{arch}.attention.value_length", head_dim_k)
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = tokens.length if isinstance(tokens, ArrayLength) else _int(meta, f"{arch}.vocab_size")
    window, swa_layers, known = _swa(meta, arch, n_layer)
    layer_bytes = [0] * n_layer
    types: dict[str, int] = {}
    by_name = {t.name: t for t in gguf.tensors}
    for tensor in gguf.tensors:
        types[tensor.type_name] = types.get(tensor.type_name, 0) + tensor.n_elements
        layer = _layer_of(tensor)
        if layer is not None and layer < n_layer:
            layer_bytes[layer] += tensor.n_bytes
    embedding = by_name.get("token_embd.weight")
    output = by_name.get("output.weight") or embedding  # tied: the embedding is the output
    file_type = meta.get("general.file_type")
    return ModelFacts(
        path=gguf.path,
        format="gguf",
        architecture=arch,
        name=str(meta.get("general.name", gguf.path.stem)),
        weights_bytes=gguf.tensor_bytes,
        n_params=sum(t.n_elements for t in gguf.tensors),
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=max(_per_layer(meta, f"{arch}.feed_forward_length", n_layer, 0), default=0),
        n_vocab=n_vocab,
        context_train=_int(meta, f"{arch}.context_length"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        sliding_window=window,
        swa_layers=swa_layers,
        swa_pattern_known=known,
        layer_bytes=tuple(layer_bytes),
        embedding_bytes=embedding.n_bytes if embedding else 0,
        output_bytes=output.n_bytes if output else 0,
        file_type=FILE_TYPES.get(file_type, str(file_type)) if isinstance(file_type, int) else "",
        tensor_types=types,
    )


def onnx_facts(path: Path) -> ModelFacts:
    """An ONNX model's initializer bytes (with the `onnx` package), else its file's size."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        size = path.stat().st_size
        return ModelFacts(path, "onnx", "onnx", path.stem, size, 0)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises its own DecodeError and others
        raise ModelError(f"{path.name} is not a readable ONNX model: {e}") from e
    total = params = 0
    for tensor in model.graph.initializer:
        count = 1
        for d in tensor.dims:
            count *= d
        params += count
        total += count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return ModelFacts(path, "onnx", "onnx", path.stem, total, params)
