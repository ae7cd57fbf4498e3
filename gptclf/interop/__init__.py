"""The run leaves the tool and comes back: transformers export and import, ONNX export, the model card,
and writing any export folder safely."""
