"""The loop that owns what HAProxy runs: events in, changes applied."""
