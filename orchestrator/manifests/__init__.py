"""Reading manifests: YAML with locations (``loader``), JSON Schema checks (``schema``), semantic checks
and model building (``build``)."""
