"""The training loop shared by `train` and `finetune`, its state, metrics and evaluation."""
