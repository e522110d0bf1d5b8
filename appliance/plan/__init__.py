"""`appliance plan`: will a model fit, how fast will it run, what does a token cost.

One module per concept:

    gguf_header.py  a GGUF file's metadata and tensor table, from the header alone
    facts.py        what sizing needs from a model: layers, heads, KV widths, sliding-window
                    layers, tensor bytes (GGUF), initializer bytes (ONNX)
    source.py       which file: an installed bundle, a bundle file, or a bare model file
    memory.py       the closed form: weights + KV cache + buffers for a run configuration
    llama_probe.py  llama.cpp's own figures: a no-allocation trial load, read from its log
    catalog.py      the hardware catalog (hardware.toml, and the operator's own entries)
    host.py         this box as a target: GPUs (the one nvidia-smi probe), RAM, bandwidth
    speed.py        decode and prefill tokens/s, cost per million tokens
    planner.py      per target: what fits, how many GPU layers, what would fit instead
    measure.py      --measure: a short benchmark through the real backend
"""
