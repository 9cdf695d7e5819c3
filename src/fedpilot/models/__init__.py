"""Models: load a Hugging Face classifier, wrap it with LoRA, find its units, freeze by plan."""
