"""One small client per API family; each speaks exactly one protocol."""
