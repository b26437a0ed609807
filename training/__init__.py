"""Alignment training (SFT, reward model, PPO, DPO): one file per method, losses as pure functions."""
