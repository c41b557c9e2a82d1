"""How entry points drive BasicSR's train/test pipelines, and stopping training on a signal."""
