"""The live catalog: read tables from ``pg_catalog`` (``read``), say what a model table should look like
there (``expect``), and list the differences (``compare``). Shared by ``import``, ``drift`` and the tests."""
