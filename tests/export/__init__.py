"""Tests of gcnet_d2.export: TorchScript, torch.export and ONNX routes."""
