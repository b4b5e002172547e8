"""Framework models to ONNX, each conversion refused unless the outputs keep their values."""
