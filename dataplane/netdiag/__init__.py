"""netdiag: the CLI that finds where and why packets are dropped (see cli.py for the commands)."""
