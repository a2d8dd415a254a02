"""A synthetic visual question-answering benchmark (shapes, colours, positions, counts, printed numbers) on which
which visual tokens are kept matters; used to train and evaluate the bundled tiny LLaVA."""
