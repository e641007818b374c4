"""icon2: a data-versioned pipeline that turns a chat model into its own preference data."""

__version__ = "0.1.0"
