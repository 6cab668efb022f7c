"""The tracker: the index of live agents, the contents they hold, and plain HTTP mirrors."""
