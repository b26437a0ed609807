"""Loading models, safetensors checkpoints, the char tokenizer, the organism zoo and its trainer."""
