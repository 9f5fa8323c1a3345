"""The control API layer: routes, the OpenAPI document and the Prometheus exposition."""
