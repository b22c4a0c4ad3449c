"""Stage operators: one module per stage family."""
