"""ONNX export of the selected classifier: ``onnx_export`` (dynamo export, metadata), ``graph``
(clean-ups that help onnxruntime), ``int8`` (static QDQ quantisation), ``stage`` (the DVC stage).
"""
