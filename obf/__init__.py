"""OmniByteFormer: a byte-level Transformer encoder-decoder for any file.

The package is layered; each layer imports only those below it (import-linter contracts in
pyproject.toml): the entry points (`cli`, `stages`, `train`, `registry`, `provenance`) ->
`evaluate` / `export` -> `generate` -> `runtime` -> `model` / `mixer` / `data` -> `formats` ->
`core`. The serving path (`core`, `formats`, `mixer`, `generate`, the ONNX runtime, `registry`)
imports no torch.
"""

__version__ = "0.1.0"
