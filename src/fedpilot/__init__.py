"""fedpilot: federated LoRA fine-tuning of foundation models for clients with heterogeneous memory."""

__version__ = "0.1.0"
