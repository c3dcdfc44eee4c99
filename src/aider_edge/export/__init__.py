"""ONNX export of the selected classifier: ``onnx_export`` (dynamo export, metadata), ``graph``
(clean-ups that help onnxruntime), ``int8`` (static QDQ quantisation), ``checkpoint`` (the run's
classifier and the inputs the graph takes). The DVC stage is :mod:`aider_edge.stages.export`.
"""
