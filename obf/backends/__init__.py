"""Model runtimes behind the `obf.sampling.Backend` protocol: torch and ONNX Runtime."""
