"""Built-in pipeline stages, registered as plugins: the parser (:mod:`.parse`) and the config's
filters and routes (:mod:`.rules`). Virus scanning is the first-party ClamAV plugin."""
