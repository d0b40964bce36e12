"""Reference data for the parity tests, computed with open_clip / PyTorch (test-time only)."""
