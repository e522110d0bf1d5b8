"""Continuous distillation: the upstream's golden answers in, a measured LoRA adapter out.

The box exports what the upstream answered (``forward.distill``); on a workstation
``appliance distill train`` fine-tunes a LoRA on the box's own GGUF weights, ``eval``
measures base against base + adapter through llama.cpp, and ``pack`` makes the adapter
bundle that the box installs like any other. One module per concept:

    golden.py    the exported JSONL as prompt/answer pairs
    hygiene.py   pairs that would teach the model to invent values, left out
    split.py     the seeded held-out split, by prompt
    base.py      which GGUF the adapter is for (bundle file, installed name, bare GGUF)
    encoding.py  pairs as the daemon's own tokens (its template, its tokenizer)
    prepare.py   JSONL -> clean, split, encoded training data in the run folder
    trainer.py   the fine-tune (transformers + peft + torch), checkpoints, resume
    convert.py   peft's LoRA -> GGUF adapter (the gguf writer), checked as the daemon does
    train.py     the train step: prepare, fine-tune, convert
    evaluate.py  the eval step: both models on the held-out pairs (exact match and token F1
                 from governance/agreement.py), escalation, cost
    pack.py      the pack step: an adapter bundle naming its base, with the eval
    rundir.py    the run folder the steps share

Only ``trainer`` and ``convert`` need the ``[train]`` extra (torch); they are imported
when training runs, so the daemon's install never needs it.
"""
