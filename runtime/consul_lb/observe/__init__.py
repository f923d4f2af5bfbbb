"""What operators look at: Prometheus metrics, the runtime's state, the running config."""
