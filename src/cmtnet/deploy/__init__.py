"""Deploying a trained CMT: export (ONNX, TorchScript), post-training quantization, and the precision an
inference runs at."""
