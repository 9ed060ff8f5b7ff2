"""moor's CNI plugin: the protocol (env + stdin in, result or error JSON out) and its modes."""
