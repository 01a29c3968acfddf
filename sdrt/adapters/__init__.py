"""LoRA and textual-inversion files -> weight deltas and tokens (no torch)."""
