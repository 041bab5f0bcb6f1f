"""``orchestrator import``: turn a live database into Resource manifests plus a baseline.

The flow is one module per step: ``inspect`` reads what ``catalog.read`` does not (schemas, serial sequences,
and every object the manifest format cannot express), ``manifest`` turns each catalog table into a Resource
document (as plain data, defaults left out), ``yamlout`` writes that document the way the examples in
``config/`` are written, ``baseline`` generates the migrations the normal way and records them as applied,
and ``run`` ties the steps together and says what it did.
"""
