"""Keys, prices, cost, budgets, rate limits and usage records."""
