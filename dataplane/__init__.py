"""The node agent and its tools; for now the namespace lab that runs the demo."""
