"""Offline tools: the `sam3d-body` CLI, export, quantization, fidelity, benchmarks, the demo and pictures."""
