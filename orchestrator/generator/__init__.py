"""The migration generator: snapshots (``from``) and the model (``to``) → operations → ordered plan → SQL files.

Layers, each importing only the ones before it: ``operations`` (immutable values that know their reverse),
``compare`` (a pure diff of two tables), ``order`` (phases and a stable topological sort), ``render`` (SQL
text), ``snapshots`` and ``generate`` (reading state, writing files).
"""
