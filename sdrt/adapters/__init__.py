"""LoRA and textual-inversion files -> weight deltas and tokens (numpy; never torch)."""
