"""The one training loop for pretraining and fine-tuning."""
