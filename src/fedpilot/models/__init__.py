"""Models: load a Hugging Face classifier, wrap it with LoRA, find its units, freeze by plan."""

import warnings

# PEFT 0.21 calls a method Transformers 5 renamed each time it wraps or loads an adapter; the FutureWarning
# says nothing a fedpilot user can act on, so it is hidden (this message only).
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
