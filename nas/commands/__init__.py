"""Command groups of the ``nas`` CLI; each module has ``register(subparsers)``."""
