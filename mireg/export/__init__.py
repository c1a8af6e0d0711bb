"""A trained run exported for deployment: to ONNX or TorchScript with its checks (``exporters``), and
the model card beside the network that lets ONNX Runtime predict without torch (``portable``)."""
