"""The model bundle at run time: manifest, ONNX encoders, tokenizer wrapper, image
preprocessing, and the lookup of the exporter by entry point (torch-free)."""
