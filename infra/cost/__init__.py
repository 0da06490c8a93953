"""Monthly cost of an inventory: price table, usage assumptions, pricing rules and reports."""
