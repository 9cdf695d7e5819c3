"""Assignment: which LoRA units each client trains."""
