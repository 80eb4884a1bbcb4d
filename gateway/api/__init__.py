"""HTTP handlers that parse, call a service and render: management, data, operations, OpenAPI."""
