"""Visual-token pruning methods and the machinery they share (row scores, sequence surgery, accounting)."""
