"""`fedpilot plan`: who in a fleet can train what, before any training."""
