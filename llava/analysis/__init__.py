"""Analyses of what a model attends to: FasterVLM's attention shift and attention dispersion
(`llava.analysis.attention`, CLIs `analyze_attn_shift` and `analyze_attn_dispersion`)."""
