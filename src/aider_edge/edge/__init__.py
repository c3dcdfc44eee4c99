"""The drone side: onnxruntime inference from a bundle, with numpy, Pillow and the standard library only.

Nothing here may import torch, mlflow, pydantic, yaml or :mod:`aider_edge.config`; this package
file stays import-light so that ``import aider_edge.edge.<module>`` pulls in only what it needs.
"""
