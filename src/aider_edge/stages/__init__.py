"""One module per ``dvc.yaml`` stage, each a plain ``run(params, root, ...)`` returning its result.

``ingest`` -> ``split`` -> ``train@<scenario>-<method>`` -> ``report`` and ``select`` ->
``export`` -> ``validate``. Each module also has ``summary(result)``: the lines the CLI prints.
The rules the stages apply (ranking, parity and latency gates) live outside, in
:mod:`aider_edge.selection` and :mod:`aider_edge.gates`, so they test without files.
"""
