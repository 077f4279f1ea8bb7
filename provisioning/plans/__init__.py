"""Operation plans, one module per kind (or family of kinds); ``registry.discover`` imports and so registers them."""
