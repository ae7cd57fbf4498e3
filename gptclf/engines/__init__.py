"""The inference engines behind `predict`: torch (fp32, bf16, fp16), torch int8 and ONNX Runtime,
each a model that the one inference loop runs."""
