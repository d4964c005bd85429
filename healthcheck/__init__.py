"""The health checker: a pure policy core and the service around it."""
