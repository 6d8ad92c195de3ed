"""Training: contrastive pre-training of the offline base, and fine-tuning of the experts."""
