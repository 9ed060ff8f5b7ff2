"""BGP messages, one per module (as ExaBGP keeps them)."""
