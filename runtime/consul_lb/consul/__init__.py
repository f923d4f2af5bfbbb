"""Everything that talks to Consul: connection settings, the HTTP client, watches."""
