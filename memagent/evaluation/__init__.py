"""Measuring a memory model: recall and retention of held-out facts, controls, general ability."""
