"""Built-in pipeline stages: the config's filters and routes."""
