"""BGP speaker (issue: BGP-routed pods)."""
