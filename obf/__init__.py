"""OmniByteFormer: a byte-level Transformer encoder-decoder for any file.

The package is split so that the serving path (formats, storage, sampling, the ONNX backend,
the registry) imports no torch; only the model, training, export and the torch backend do.
"""

__version__ = "0.1.0"
